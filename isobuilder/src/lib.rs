//! isobuilder
