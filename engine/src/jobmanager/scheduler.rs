//! The resource manager's pure decisions: which free slots a job gets, and how the job slots
//! are laid over them. Slots are spread over the TaskManagers round-robin (Flink's
//! `cluster.evenly-spread-out-slots`), so a job's exchanges cross TaskManagers when there are
//! several and no TaskManager is loaded while another idles. Each TaskManager's slots form one
//! contiguous range of job slots, in registration order.

use crate::rpc::ids::TaskManagerId;

/// The free slots of one TaskManager, in the order slots should be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeSlots {
    pub tm: TaskManagerId,
    pub slots: Vec<u32>,
}

/// `needed` slots taken round-robin over `free` (TaskManagers in order), grouped per
/// TaskManager in that order; `None` if fewer than `needed` are free. TaskManagers that give
/// no slot are left out.
pub fn choose_slots(free: &[FreeSlots], needed: u32) -> Option<Vec<FreeSlots>> {
    let available: usize = free.iter().map(|f| f.slots.len()).sum();
    if (available as u64) < u64::from(needed) || needed == 0 {
        return None;
    }
    let mut taken = vec![0usize; free.len()];
    let mut left = needed as usize;
    while left > 0 {
        for (i, f) in free.iter().enumerate() {
            if left > 0 && taken[i] < f.slots.len() {
                taken[i] += 1;
                left -= 1;
            }
        }
    }
    Some(
        free.iter()
            .zip(taken)
            .filter(|(_, k)| *k > 0)
            .map(|(f, k)| FreeSlots { tm: f.tm, slots: f.slots[..k].to_vec() })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tm(n: u8) -> TaskManagerId {
        TaskManagerId([n; 16])
    }

    #[test]
    fn slots_spread_over_task_managers() {
        let free = vec![FreeSlots { tm: tm(1), slots: vec![0, 1] }, FreeSlots { tm: tm(2), slots: vec![3] }];
        assert_eq!(
            choose_slots(&free, 2).unwrap(),
            vec![FreeSlots { tm: tm(1), slots: vec![0] }, FreeSlots { tm: tm(2), slots: vec![3] }]
        );
        assert_eq!(
            choose_slots(&free, 3).unwrap(),
            vec![FreeSlots { tm: tm(1), slots: vec![0, 1] }, FreeSlots { tm: tm(2), slots: vec![3] }]
        );
        assert_eq!(choose_slots(&free, 1).unwrap(), vec![FreeSlots { tm: tm(1), slots: vec![0] }]);
    }

    #[test]
    fn too_few_slots_or_none_needed_is_none() {
        let free = vec![FreeSlots { tm: tm(1), slots: vec![0] }, FreeSlots { tm: tm(2), slots: vec![] }];
        assert!(choose_slots(&free, 2).is_none());
        assert!(choose_slots(&free, 0).is_none());
        assert!(choose_slots(&[], 1).is_none());
        assert_eq!(choose_slots(&free, 1).unwrap().len(), 1, "a TaskManager with no free slot is left out");
    }
}
