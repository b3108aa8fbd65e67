//! Consistency check and repair of an image (needs `alloc`).
