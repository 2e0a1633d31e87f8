//! vedge
