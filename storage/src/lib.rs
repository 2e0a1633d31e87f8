//! vedge-storage: the SSD segment store under the edge RAM tier (see ARCHITECTURE.md).
