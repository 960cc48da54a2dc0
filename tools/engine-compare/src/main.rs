//! The service's rotation pattern on three storage engines (sled 0.34,
//! fjall 2.x as `fjall`, fjall 3.x as `fjall3`), single-threaded, to see how
//! each scales from 1k to 1M tokens (issue #6's note has the figures). Two
//! key spaces: users (user id -> 32-byte hash + 40 bytes) and index (hash ->
//! user id + 30 bytes). A rotation reads the user, removes the old hash,
//! inserts the new one and rewrites the user; every GROUP rotations share one
//! durable sync (fdatasync), as the service's group commit does. In `fjall3`
//! each group is one WriteBatch committed with durability SyncData (the
//! journal fdatasync happens inside commit, before the memtable apply); in
//! `fjall` the batch is committed and then persisted. The 512 users rotated
//! are the last ones, as in bench.sh. MEMTABLE_MB/WRITE_BUFFER_MB (fjall and
//! fjall3 only) default to 4/16; the block cache is 4 MiB on every engine.
//! Note: in fjall 3.1.13 max_write_buffer_size is deprecated and not acted on.
//!
//!   engine-compare sled|fjall|fjall3 USERS ROTATIONS DIR [MEMTABLE_MB WRITE_BUFFER_MB]
use std::time::Instant;

const GROUP: usize = 30;
const ROT_USERS: usize = 512;

fn h(i: u64, g: u64) -> [u8; 32] {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        &[i.to_le_bytes(), g.to_le_bytes()].concat(),
    );
    let mut a = [0u8; 32];
    a.copy_from_slice(d.as_ref());
    a
}
fn uid(i: u64) -> Vec<u8> {
    format!("user-{i:07}").into_bytes()
}
fn rss() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = args[1].as_str();
    let n: u64 = args[2].parse().unwrap();
    let rotations: usize = args[3].parse().unwrap();
    let dir = std::path::PathBuf::from(&args[4]);
    let _ = std::fs::remove_dir_all(&dir);
    let mut gens = vec![0u64; n as usize];
    let t = Instant::now();
    match backend {
        "fjall" => {
            use fjall::{Config, PartitionCreateOptions, PersistMode};
            let memtable_mb: u32 = args.get(5).map_or(4, |a| a.parse().unwrap());
            let buffer_mb: u64 = args.get(6).map_or(16, |a| a.parse().unwrap());
            let ks = Config::new(&dir)
                .cache_size(4 << 20)
                .max_write_buffer_size(buffer_mb << 20)
                .max_journaling_size((2 * buffer_mb) << 20)
                .open()
                .unwrap();
            let users = ks
                .open_partition(
                    "users",
                    PartitionCreateOptions::default().max_memtable_size(memtable_mb << 20),
                )
                .unwrap();
            let index = ks
                .open_partition(
                    "index",
                    PartitionCreateOptions::default().max_memtable_size(memtable_mb << 20),
                )
                .unwrap();
            let mut b = ks.batch();
            for i in 0..n {
                let hash = h(i, 0);
                let mut v = hash.to_vec();
                v.extend_from_slice(&[7u8; 40]);
                b.insert(&users, uid(i), v);
                let mut iv = uid(i);
                iv.extend_from_slice(&[9u8; 30]);
                b.insert(&index, hash, iv);
                if i % 10000 == 9999 {
                    b.commit().unwrap();
                    b = ks.batch();
                }
            }
            b.commit().unwrap();
            ks.persist(PersistMode::SyncAll).unwrap();
            eprintln!("load {:?} {}", t.elapsed(), rss());
            let t = Instant::now();
            let mut r = 0;
            while r < rotations {
                let mut b = ks.batch();
                for _ in 0..GROUP {
                    let i = n - 1 - (r % ROT_USERS) as u64;
                    let cur = users.get(uid(i)).unwrap().unwrap();
                    let old: [u8; 32] = cur[..32].try_into().unwrap();
                    gens[i as usize] += 1;
                    let new = h(i, gens[i as usize]);
                    b.remove(&index, old);
                    let mut iv = uid(i);
                    iv.extend_from_slice(&[9u8; 30]);
                    b.insert(&index, new, iv);
                    let mut v = new.to_vec();
                    v.extend_from_slice(&[7u8; 40]);
                    b.insert(&users, uid(i), v);
                    r += 1;
                }
                b.commit().unwrap();
                ks.persist(PersistMode::SyncData).unwrap();
            }
            let s = t.elapsed().as_secs_f64();
            eprintln!(
                "fjall n={n} rotations/s {:.0} {}",
                rotations as f64 / s,
                rss()
            );
        }
        "fjall3" => {
            use fjall3::{Database, KeyspaceCreateOptions, PersistMode};
            let memtable_mb: u64 = args.get(5).map_or(4, |a| a.parse().unwrap());
            let buffer_mb: u64 = args.get(6).map_or(16, |a| a.parse().unwrap());
            // max_write_buffer_size is #[deprecated = "todo"] (and unused) in 3.1.13.
            #[allow(deprecated)]
            let db = Database::builder(&dir)
                .cache_size(4 << 20)
                .max_write_buffer_size(Some(buffer_mb << 20))
                .open()
                .unwrap();
            let opts = || KeyspaceCreateOptions::default().max_memtable_size(memtable_mb << 20);
            let users = db.keyspace("users", opts).unwrap();
            let index = db.keyspace("index", opts).unwrap();
            let mut b = db.batch();
            for i in 0..n {
                let hash = h(i, 0);
                let mut v = hash.to_vec();
                v.extend_from_slice(&[7u8; 40]);
                b.insert(&users, uid(i), v);
                let mut iv = uid(i);
                iv.extend_from_slice(&[9u8; 30]);
                b.insert(&index, hash, iv);
                if i % 10000 == 9999 {
                    b.commit().unwrap();
                    b = db.batch();
                }
            }
            b.commit().unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
            eprintln!("load {:?} {}", t.elapsed(), rss());
            let t = Instant::now();
            let mut r = 0;
            while r < rotations {
                let mut b = db.batch().durability(Some(PersistMode::SyncData));
                for _ in 0..GROUP {
                    let i = n - 1 - (r % ROT_USERS) as u64;
                    let cur = users.get(uid(i)).unwrap().unwrap();
                    let old: [u8; 32] = cur[..32].try_into().unwrap();
                    gens[i as usize] += 1;
                    let new = h(i, gens[i as usize]);
                    b.remove(&index, old);
                    let mut iv = uid(i);
                    iv.extend_from_slice(&[9u8; 30]);
                    b.insert(&index, new, iv);
                    let mut v = new.to_vec();
                    v.extend_from_slice(&[7u8; 40]);
                    b.insert(&users, uid(i), v);
                    r += 1;
                }
                // One journal write + fdatasync per group, inside commit.
                b.commit().unwrap();
            }
            let s = t.elapsed().as_secs_f64();
            eprintln!(
                "fjall3 n={n} rotations/s {:.0} {}",
                rotations as f64 / s,
                rss()
            );
        }
        _ => {
            use sled::Transactional;
            let db = sled::Config::new()
                .path(&dir)
                .cache_capacity(4 << 20)
                .flush_every_ms(None)
                .open()
                .unwrap();
            let users = db.open_tree("users").unwrap();
            let index = db.open_tree("index").unwrap();
            for i in 0..n {
                let hash = h(i, 0);
                let mut v = hash.to_vec();
                v.extend_from_slice(&[7u8; 40]);
                users.insert(uid(i), v).unwrap();
            }
            let mut all: Vec<(u64, [u8; 32])> = (0..n).map(|i| (i, h(i, 0))).collect();
            all.sort_by(|a, b| a.1.cmp(&b.1));
            for (i, hash) in all {
                let mut iv = uid(i);
                iv.extend_from_slice(&[9u8; 30]);
                index.insert(hash, iv).unwrap();
            }
            db.flush().unwrap();
            eprintln!("load {:?} {}", t.elapsed(), rss());
            let t = Instant::now();
            let mut r = 0;
            while r < rotations {
                let start = r;
                (&users, &index)
                    .transaction(|(u, x)| {
                        let mut rr = start;
                        for _ in 0..GROUP {
                            let i = n - 1 - (rr % ROT_USERS) as u64;
                            let cur = u.get(uid(i))?.unwrap();
                            let old: [u8; 32] = cur[..32].try_into().unwrap();
                            let new = h(i, rr as u64 + 1);
                            x.remove(&old[..])?;
                            let mut iv = uid(i);
                            iv.extend_from_slice(&[9u8; 30]);
                            x.insert(&new[..], iv)?;
                            let mut v = new.to_vec();
                            v.extend_from_slice(&[7u8; 40]);
                            u.insert(uid(i), v)?;
                            rr += 1;
                        }
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .unwrap();
                r += GROUP;
                db.flush().unwrap();
                // sled's flush is not power-loss durable: fdatasync its file as the service does.
                let f = std::fs::File::open(dir.join("db")).unwrap();
                f.sync_data().unwrap();
            }
            let s = t.elapsed().as_secs_f64();
            eprintln!(
                "sled n={n} rotations/s {:.0} {}",
                rotations as f64 / s,
                rss()
            );
        }
    }
}
