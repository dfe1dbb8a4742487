//! The JobManager: the dispatcher (accepts jobs by name, keeps every job's state, serves the
//! REST API), the resource manager (registered TaskManagers, their slots and heartbeats) and
//! one job master per job (slot requests, deployment, task states, restarts, the commit of a
//! finished job's output). It runs on tokio threads of its own; TaskManagers reach it over the
//! control plane of [`crate::rpc`].

pub mod api;
pub mod rest;
