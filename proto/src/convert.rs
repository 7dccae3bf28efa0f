//! Mapping of `netflow_parser` output (any exporter's v5, v9 or IPFIX) into [`crate::FlowRecord`].
