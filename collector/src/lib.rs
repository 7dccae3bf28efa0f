//! labelflow-collector.
