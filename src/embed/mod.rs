//! Local embeddings with Candle (all-MiniLM-L6-v2).
