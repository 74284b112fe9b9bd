//! Integration tests: the real binary on port 0 with a temporary database, driven by yrs
//! clients over real WebSockets.

mod support;

mod api;
mod auth;
mod awareness;
mod cli;
mod crash_loop;
mod demo;
mod durability;
mod floods;
mod hostile;
mod limits;
mod ot;
mod property;
mod refusals;
mod storage;
mod sync;
