//! A slot: one thread named `cs-slot-<n>`, running one glommio `LocalExecutor` pinned to one
//! CPU, hosting one subtask of each chain of a job (slot sharing). The thread builds the chains
//! of its tasks (chains are not `Send`; they live and die on their slot), spawns each task as a
//! cooperative future, and ends when all of them have ended. A panic in a task is caught at the
//! task boundary and fails the job with the name of the operator that was running user code.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use corestream_netstack::{BufferPool, CreditConfig, Doorbell, InputGate, LocalChannel};
use futures_lite::FutureExt;
use glommio::{LocalExecutorBuilder, Placement};

use super::build::{BuildCtx, NodeRuntime, OutputCtx, OutputEdgeRt};
use super::job::JobShared;
use super::metrics::{TaskCounters, TaskPhase};
use super::task::{self, TaskBody, TaskEnv};
use crate::checkpoint::TaskCheckpointing;
use crate::config::RuntimeMode;
use crate::error::{JobError, TaskError};
use crate::operators::{current_node, enter_node, OperatorMetrics};

/// Everything needed to build and run one subtask on its slot thread.
pub(crate) struct TaskBuild {
    pub subtask: u32,
    pub parallelism: u32,
    pub mode: RuntimeMode,
    pub max_parallelism: u32,
    pub auto_watermark_interval: Duration,
    /// (node id, runtime, metrics), head first.
    pub nodes: Vec<(usize, Arc<dyn NodeRuntime>, Arc<OperatorMetrics>)>,
    pub head_is_source: bool,
    pub outputs: Vec<OutputEdgeRt>,
    pub inputs: Vec<Arc<LocalChannel>>,
    pub credit: CreditConfig,
    pub bell: Arc<Doorbell>,
    pub counters: Arc<TaskCounters>,
    pub pool: BufferPool,
    pub buffer_timeout: Duration,
    pub max_watermark_skew: Option<Duration>,
    pub state_backend: corestream_state::StateBackendKind,
    pub lsm: corestream_state::LsmConfig,
    pub batch_size: usize,
    /// Set when the job takes checkpoints or restores from one.
    pub checkpointing: Option<TaskCheckpointing>,
}

/// How a slot thread runs its executor.
#[derive(Debug, Clone)]
pub(crate) struct SlotSettings {
    pub slot: u32,
    pub cpu: Option<usize>,
    pub io_memory_bytes: usize,
    pub preempt_timer: Duration,
    pub spin_before_park: Option<Duration>,
}

fn build_task(build: &mut TaskBuild, job: &Arc<JobShared>) -> Result<TaskBody, TaskError> {
    let ctx = |node: usize, metrics: &Arc<OperatorMetrics>| BuildCtx {
        node,
        subtask: build.subtask,
        parallelism: build.parallelism,
        mode: build.mode,
        max_parallelism: build.max_parallelism,
        auto_watermark_interval: build.auto_watermark_interval,
        state_backend: build.state_backend,
        lsm: build.lsm.clone(),
        metrics: metrics.clone(),
        bell: build.bell.clone(),
        job,
        sides: std::cell::RefCell::new(Vec::new()),
    };
    let (tail, tail_rt, _) = build.nodes.last().expect("a chain has at least one node");
    let out_ctx = OutputCtx {
        pool: build.pool.clone(),
        counters: build.counters.clone(),
        node: *tail,
        max_backlog: build.credit.max_backlog_per_channel,
        subtask: build.subtask,
    };
    let (side_edges, tail_edges): (Vec<_>, Vec<_>) =
        std::mem::take(&mut build.outputs).into_iter().partition(|e| e.side.is_some());
    let mut emit = tail_rt.output(tail_edges, out_ctx);
    // Side edges grouped by (producer, tag): one output per tag, built for its record type.
    let mut sides: Vec<(usize, String, Vec<OutputEdgeRt>)> = Vec::new();
    for e in side_edges {
        let side = e.side.as_ref().expect("side edge");
        match sides.iter_mut().find(|(p, t, _)| *p == side.producer && *t == side.tag) {
            Some((_, _, edges)) => edges.push(e),
            None => sides.push((side.producer, side.tag.clone(), vec![e])),
        }
    }
    let side_ctx = |producer: usize| OutputCtx {
        pool: build.pool.clone(),
        counters: build.counters.clone(),
        node: producer,
        max_backlog: build.credit.max_backlog_per_channel,
        subtask: build.subtask,
    };
    let first_linked = usize::from(build.head_is_source);
    for (node, rt, metrics) in build.nodes[first_linked..].iter().rev() {
        let c = ctx(*node, metrics);
        for i in (0..sides.len()).rev() {
            if sides[i].0 == *node {
                let (producer, tag, edges) = sides.swap_remove(i);
                let consumer_rt = edges[0].side.as_ref().expect("side edge").consumer_rt.clone();
                let (output, sink) = consumer_rt.side_link(edges, side_ctx(producer));
                c.sides.borrow_mut().push((tag, output, sink));
            }
        }
        emit = rt.link(&c, emit)?;
        let untaken = c.sides.borrow().first().map(|(tag, _, _)| tag.clone());
        if let Some(tag) = untaken {
            panic!("internal error: side output '{tag}' of node {node} not taken by its operator");
        }
    }
    if let Some((producer, tag, _)) = sides.first() {
        panic!("internal error: side output '{tag}' of node {producer} has no producing operator in its chain");
    }
    let (head, head_rt, head_metrics) = &build.nodes[0];
    if build.head_is_source {
        Ok(TaskBody::Source(head_rt.source(&ctx(*head, head_metrics), emit)?))
    } else {
        let gate = InputGate::new(std::mem::take(&mut build.inputs), &build.credit);
        Ok(TaskBody::Input { input: head_rt.head(emit), gate })
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}

async fn run_guarded(build: TaskBuild, job: Arc<JobShared>) {
    let bell = build.bell.clone();
    run_task(build, job).await;
    // The bell outlives the task (channels and the job hold it); its waker must not keep the
    // task, and through it the slot's executor and its eventfd, alive.
    bell.clear_waker();
}

async fn run_task(mut build: TaskBuild, job: Arc<JobShared>) {
    let subtask = build.subtask;
    let head = build.nodes[0].0;
    let env = TaskEnv {
        bell: build.bell.clone(),
        job: job.clone(),
        counters: build.counters.clone(),
        buffer_timeout: build.buffer_timeout,
        max_watermark_skew: build.max_watermark_skew,
        batch_size: build.batch_size.max(1),
        checkpointing: build.checkpointing.clone(),
    };
    let counters = build.counters.clone();
    let body = async {
        let body = build_task(&mut build, &job)?;
        counters.set_phase(TaskPhase::Running);
        task::run(body, env).await
    };
    // Tasks of one slot share a thread: each poll starts attributed to this task's head, so a
    // panic is never blamed on an operator of another task that ran before it.
    let mut body = Box::pin(body);
    let body = std::future::poll_fn(move |cx| {
        enter_node(head);
        body.as_mut().poll(cx)
    });
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    let error = match outcome {
        Ok(Ok(())) => {
            counters.set_phase(TaskPhase::Finished);
            return;
        }
        Ok(Err(e)) => e,
        Err(payload) => TaskError::User { node: current_node().unwrap_or(head), message: panic_message(payload) },
    };
    counters.set_phase(if matches!(error, TaskError::Cancelled) { TaskPhase::Cancelled } else { TaskPhase::Failed });
    job.fail_task(error, subtask);
}

/// Starts the slot thread for `tasks`.
pub(crate) fn spawn(
    settings: SlotSettings,
    tasks: Vec<TaskBuild>,
    job: Arc<JobShared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("cs-slot-{}", settings.slot)).spawn(move || {
        let placement = match settings.cpu {
            Some(cpu) => Placement::Fixed(cpu),
            None => Placement::Unbound,
        };
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("cs-slot-{}", settings.slot))
            .io_memory(settings.io_memory_bytes)
            .preempt_timer(settings.preempt_timer);
        if let Some(spin) = settings.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        let executor = builder.make();
        let executor = match executor {
            Ok(ex) => ex,
            Err(e) => {
                job.fail(JobError::SlotStart { slot: settings.slot, message: e.to_string() });
                job.slot_done();
                return;
            }
        };
        let done = job.clone();
        executor.run(async move {
            let handles: Vec<_> =
                tasks.into_iter().map(|t| glommio::spawn_local(run_guarded(t, job.clone()))).collect();
            for h in handles {
                h.await;
            }
        });
        done.slot_done();
    })
}
