//! Keyword (Tantivy), semantic and hybrid search, context assembly.
