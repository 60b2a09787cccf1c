//! The bundle ISO on the node: where it is ([`discover`]), how it is read ([`mount`], with the
//! loop-device ioctls in [`loopdev`]).

pub mod discover;
pub mod loopdev;
pub mod mount;
