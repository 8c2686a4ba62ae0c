//! Documents and chunking (owned by the context API work).
