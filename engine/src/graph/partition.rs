//! How records of one operator reach the subtasks of the next, and which producer subtask is
//! connected to which consumer subtask for each scheme.

/// Partitioning of an edge between two operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Partitioning {
    /// Subtask i sends to subtask i (requires equal parallelism); chainable.
    Forward,
    /// Round-robin over all consumer subtasks.
    Rebalance,
    /// Round-robin over a local subset of consumer subtasks.
    Rescale,
    /// Every record to every consumer subtask.
    Broadcast,
    /// By key: key hash → key group → the subtask owning that key group.
    Hash,
}

impl Partitioning {
    pub fn name(&self) -> &'static str {
        match self {
            Partitioning::Forward => "FORWARD",
            Partitioning::Rebalance => "REBALANCE",
            Partitioning::Rescale => "RESCALE",
            Partitioning::Broadcast => "BROADCAST",
            Partitioning::Hash => "HASH",
        }
    }

    /// Flink's default: forward between equal parallelisms, rebalance otherwise.
    pub fn default_for(producer_parallelism: u32, consumer_parallelism: u32) -> Self {
        if producer_parallelism == consumer_parallelism {
            Partitioning::Forward
        } else {
            Partitioning::Rebalance
        }
    }
}

/// Consumer subtasks that producer subtask `producer` sends to, in channel order. For
/// [`Partitioning::Hash`] the channel index equals the consumer subtask index.
pub fn targets(partitioning: Partitioning, producers: u32, consumers: u32, producer: u32) -> Vec<u32> {
    debug_assert!(producer < producers);
    match partitioning {
        Partitioning::Forward => vec![producer],
        Partitioning::Rebalance | Partitioning::Broadcast | Partitioning::Hash => (0..consumers).collect(),
        Partitioning::Rescale => {
            let (p, c, i) = (producers as u64, consumers as u64, producer as u64);
            if c >= p {
                ((i * c / p) as u32..((i + 1) * c / p) as u32).collect()
            } else {
                vec![(i * c / p) as u32]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescale_connects_every_consumer_and_stays_local() {
        for p in 1..=8u32 {
            for c in 1..=8u32 {
                let mut fed = vec![0u32; c as usize];
                for i in 0..p {
                    let t = targets(Partitioning::Rescale, p, c, i);
                    assert!(!t.is_empty(), "producer {i} of {p} has no target among {c}");
                    for j in t {
                        fed[j as usize] += 1;
                    }
                }
                assert!(fed.iter().all(|n| *n >= 1), "p={p} c={c}: {fed:?}");
                assert!(fed.iter().sum::<u32>() == p.max(c), "rescale is pointwise, not all-to-all");
            }
        }
    }

    #[test]
    fn default_is_forward_only_for_equal_parallelism() {
        assert_eq!(Partitioning::default_for(2, 2), Partitioning::Forward);
        assert_eq!(Partitioning::default_for(2, 3), Partitioning::Rebalance);
    }
}
