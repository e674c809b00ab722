//! Client-side load balancing (being written).
