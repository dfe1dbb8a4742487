//! Where slots run: the machine's physical cores as hwloc sees them (through `hwlocality`),
//! each with its processing units, restricted to the CPUs this process may use. Slot i gets the
//! first PU of core i; with more slots than cores, slots wrap onto the cores' sibling PUs (and
//! then share PUs), which the cluster reports as a warning. Without hwloc, `core_affinity`'s
//! list of CPUs is used, one per "core".

use hwlocality::object::types::ObjectType;

/// One physical core and its processing units (OS CPU numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    pub pus: Vec<usize>,
}

/// The cores available to this process.
#[derive(Debug, Clone)]
pub struct Topology {
    pub cores: Vec<Core>,
    /// Which library described the machine.
    pub source: &'static str,
}

impl Topology {
    /// Reads the machine's topology (hwloc first, then `core_affinity`, then one CPU).
    pub fn detect() -> Self {
        if let Some(t) = Self::from_hwloc() {
            return t;
        }
        let cores: Vec<Core> =
            core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| Core { pus: vec![c.id] }).collect();
        if !cores.is_empty() {
            return Self { cores, source: "core_affinity" };
        }
        Self { cores: vec![Core { pus: vec![0] }], source: "fallback" }
    }

    fn from_hwloc() -> Option<Self> {
        let topology = hwlocality::Topology::new().ok()?;
        let allowed = topology.allowed_cpuset();
        let cores: Vec<Core> = topology
            .objects_with_type(ObjectType::Core)
            .filter_map(|core| {
                let cpuset = core.cpuset()?;
                let pus: Vec<usize> = cpuset.iter_set().map(usize::from).filter(|pu| allowed.is_set(*pu)).collect();
                (!pus.is_empty()).then_some(Core { pus })
            })
            .collect();
        (!cores.is_empty()).then_some(Self { cores, source: "hwloc" })
    }

    pub fn physical_cores(&self) -> usize {
        self.cores.len()
    }

    /// The CPU of each of `slots` slots.
    pub fn slot_cpus(&self, slots: u32) -> Vec<usize> {
        slot_cpus(&self.cores, slots)
    }
}

/// Slot i → first PU of core i; later rounds use the next PU of each core, then wrap.
pub fn slot_cpus(cores: &[Core], slots: u32) -> Vec<usize> {
    let n = cores.len().max(1);
    (0..slots as usize)
        .map(|i| {
            let core = &cores[i % n];
            core.pus[(i / n) % core.pus.len()]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_take_one_pu_per_core_before_siblings() {
        let cores = vec![Core { pus: vec![0, 2] }, Core { pus: vec![1, 3] }];
        assert_eq!(slot_cpus(&cores, 2), vec![0, 1]);
        assert_eq!(slot_cpus(&cores, 4), vec![0, 1, 2, 3]);
        assert_eq!(slot_cpus(&cores, 5), vec![0, 1, 2, 3, 0]);
    }

    #[test]
    fn detects_at_least_one_core() {
        let t = Topology::detect();
        assert!(t.physical_cores() >= 1);
        assert!(t.cores.iter().all(|c| !c.pus.is_empty()));
    }
}
