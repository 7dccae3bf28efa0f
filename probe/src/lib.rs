//! labelflow-probe: NFLOG groups in, labelled flows out as IPFIX / NetFlow v9 / v5.

pub mod packet;
