//! Test support for the workspace: a deterministic network simulation of `rpc-proto`
//! connections.
//!
//! This crate is not shipped; it holds the harness the simulation tests (`tests/sim_*.rs`) and
//! the model tests (`tests/model.rs`) run on. It does no real I/O and reads the real clock
//! once per [`Sim`], for the base instant; everything after is virtual time.
//!
//! ```text
//!            Netem a→b: latency + jitter, split, bandwidth
//!   Side a ─────────────────────────────────────────────► Side b
//! Connection ◄───────────────────────────────────────── Connection
//!            Netem b→a           faults: cut, crash, close, close_after
//!
//!   Sim::step: drain every poll_* ─► advance to the next delivery / deadline ─► handle_*
//! ```
//!
//! - [`Sim`] owns the connections ([`Side`]s), the links and the clock, and records every
//!   event with its virtual time.
//! - [`Netem`] shapes one direction of a link; bytes are never reordered (it is TCP).
//! - [`Notice`] says how a side learns of a fault: end of file, a transport error, or nothing.
//! - [`echo_server`] is a [`Handler`] answering every request with a payload derived from it
//!   ([`reply_to`], [`chunk_body`], [`stream_body`], [`upload_reply`]).
//!
//! ```
//! use std::time::Duration;
//! use rpc_proto::{Config, ConnectionError, Event, RequestError};
//! use rpc_tests::{Netem, Notice, Sim};
//!
//! let config = Config::builder()
//!     .with_idle_timeout(Some(Duration::from_secs(30)))
//!     .build()
//!     .unwrap();
//! let netem = Netem::ideal().with_latency(Duration::from_millis(20)).with_max_piece(3);
//! let (mut sim, client, server) = Sim::pair(7, config.clone(), config, netem);
//!
//! sim.command(client, |c, now| c.rpc(now, "ping".into(), None)).unwrap();
//! sim.crash(server, Notice::Silent);
//! sim.run_until_quiet();
//!
//! let (at, error) = sim.closed_at(client).unwrap();
//! assert_eq!(at - sim.base(), Duration::from_secs(30));
//! assert!(matches!(error, ConnectionError::TimedOut { outstanding: 1, .. }));
//! ```

mod echo;
mod netem;
mod sim;

pub use echo::{chunk_body, echo_server, reply_to, stream_body, upload_reply};
pub use netem::{LinkStats, Netem, Notice};
pub use sim::{Handler, Recorded, Side, Sim};
