//! IPFIX information element identifiers used by labelflow (IANA "IPFIX Information Elements").
