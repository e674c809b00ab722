//! Service discovery (being written).
