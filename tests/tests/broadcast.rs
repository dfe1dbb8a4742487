//! The broadcast-state pattern end to end: rules broadcast to every subtask of a keyed stream
//! (`keyed.connect_broadcast(rules).process(..)`), applied to its records, with the rules
//! reaching every subtask in order.

mod common;

mod enabled {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::common::{join, read_until};
    use corestream::{KeyedBroadcastProcessFunction, KeyedContext, KeyedRuntimeContext, ProcessContext};
    use corestream_tests::cluster;

    type Rules = corestream::BroadcastState<u32, u64>;

    /// Rules (id, multiplier) applied to (key, value) records: the output is value × the sum of
    /// the multipliers of the rules seen so far, and how many rules that was.
    struct ApplyRules {
        subtask: u32,
    }

    const ACK: u8 = 0;
    const RESULT: u8 = 1;

    /// (kind, subtask, key or rule id, value, rules seen, highest rule id seen).
    type BOut = (u8, u32, u64, u64, u32, i64);

    impl KeyedBroadcastProcessFunction<u64, (u64, u64), (u32, u64), BOut> for ApplyRules {
        type StateKey = u32;
        type StateValue = u64;

        fn open(&mut self, ctx: &mut KeyedRuntimeContext<'_, u64>) {
            self.subtask = ctx.subtask();
        }

        fn process_element(&mut self, (k, v): (u64, u64), rules: &Rules, ctx: &mut KeyedContext<'_, u64, BOut>) {
            assert_eq!(*ctx.key(), k);
            let m: u64 = rules.values().sum();
            let highest = rules.keys().max().map_or(-1, |i| *i as i64);
            ctx.collect((RESULT, self.subtask, k, v * m, rules.len() as u32, highest));
        }

        fn process_broadcast_element(
            &mut self,
            (id, m): (u32, u64),
            rules: &mut Rules,
            ctx: &mut ProcessContext<'_, BOut>,
        ) {
            rules.insert(id, m);
            ctx.collect((ACK, self.subtask, id as u64, m, rules.len() as u32, id as i64));
        }
    }

    fn rules() -> Vec<(u32, u64)> {
        (0..6).map(|i| (i, 1 << i)).collect()
    }

    #[test]
    fn records_after_all_rules_arrived_see_every_rule_on_every_subtask() {
        for p in [1, 2, 4] {
            let cluster = cluster(p);
            let mut env = cluster.environment();
            env.set_parallelism(p);
            let (tx, records) = env.from_channel::<(u64, u64)>(1024);
            let out = records
                .key_by(|r: &(u64, u64)| r.0)
                .connect_broadcast(env.from_iter(rules()))
                .process(|| ApplyRules { subtask: u32::MAX })
                .collect();
            let job = env.execute_async("broadcast").unwrap();
            let mut got = Vec::new();
            let want_acks = p as usize * rules().len();
            read_until(&out, &mut got, Duration::from_secs(10), "every rule on every subtask", |g| {
                g.len() == want_acks
            });
            let mut acks: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
            for o in &got {
                assert_eq!(o.0, ACK);
                acks.entry(o.1).or_default().push(o.2);
            }
            assert_eq!(acks.len(), p as usize, "p={p}: every subtask sees the rules");
            for (s, ids) in &acks {
                assert_eq!(ids, &(0..6).collect::<Vec<u64>>(), "p={p}: subtask {s} sees the rules in order");
            }
            got.clear();
            for k in 0..200u64 {
                tx.send((k, k + 1)).unwrap();
            }
            drop(tx);
            got.extend(out);
            join(job);
            assert_eq!(got.len(), 200, "p={p}");
            let total: u64 = rules().iter().map(|r| r.1).sum();
            for o in got {
                assert_eq!((o.0, o.3, o.4), (RESULT, (o.2 + 1) * total, 6), "p={p}: {o:?}");
            }
        }
    }

    #[test]
    fn records_racing_the_rules_see_a_growing_prefix_of_them() {
        for p in [1, 2, 4] {
            let cluster = cluster(p);
            let mut env = cluster.environment();
            env.set_parallelism(p);
            let records = env.from_generator(100_000, |i| (i % 1000, 1));
            let out = records
                .key_by(|r: &(u64, u64)| r.0)
                .connect_broadcast(env.from_iter(rules()))
                .process(|| ApplyRules { subtask: u32::MAX })
                .collect();
            let job = env.execute_async("broadcast race").unwrap();
            let got: Vec<BOut> = out.collect();
            join(job);
            let mut seen_per_subtask: BTreeMap<u32, u32> = BTreeMap::new();
            let mut results = 0;
            for o in got {
                let seen = seen_per_subtask.entry(o.1).or_insert(0);
                // Rules arrive in order, so the rules seen are always 0..n.
                assert_eq!(o.5, o.4 as i64 - 1, "p={p}: {o:?} saw rules that are not a prefix");
                assert!(o.4 >= *seen, "p={p}: subtask {} forgot rules: {o:?}", o.1);
                *seen = o.4;
                if o.0 == RESULT {
                    results += 1;
                    let m: u64 = rules().iter().take(o.4 as usize).map(|r| r.1).sum();
                    assert_eq!(o.3, m, "p={p}: {o:?}");
                }
            }
            assert_eq!(results, 100_000, "p={p}");
            assert!(seen_per_subtask.values().all(|n| *n == 6), "p={p}: every subtask ends with every rule");
        }
    }
}
