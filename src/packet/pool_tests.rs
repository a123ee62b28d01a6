//! Tests of `pool.rs`.
use super::*;

#[test]
fn classes_by_length_and_everything_returns() {
    let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
    let (small, large) = pool.total_frames();
    {
        let mut cache = pool.cache();
        let mut a = cache.alloc(1500).unwrap();
        assert_eq!(pool.capacity(&a), 4096);
        let b = cache.alloc(60_000).unwrap();
        assert_eq!(pool.capacity(&b), 69_632);
        assert!(cache.alloc(MAX_PACKET + 1_000_000).is_none());
        a.len = 4;
        let off = a.offset as usize;
        pool.frame_mut(&mut a)[off..off + 4].copy_from_slice(b"abcd");
        assert_eq!(pool.bytes(&a), b"abcd");
        cache.free(a);
        cache.free(b);
    }
    assert_eq!(pool.free_frames(), (small, large));
}

#[test]
fn a_handle_from_another_pools_ledger_reaches_nothing() {
    let big = pool_with_frames(2048);
    let small = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
    let mut loans = crate::packet::UmemLoans::new(&big);
    let mut cache = big.cache();
    let mut held: Vec<_> = std::iter::from_fn(|| cache.alloc(64)).take(2048).collect();
    let at = held
        .iter()
        .position(|f| f.index() >= 1000)
        .expect("a frame past the small pool");
    let addr = loans.lend(held.swap_remove(at)).unwrap();
    for f in held {
        cache.free(f);
    }
    let mut foreign = loans.reclaim(addr, 64).unwrap();

    assert!(!small.owns(&foreign));
    assert!(small.frame_mut(&mut foreign).is_empty());
    assert!(small.bytes(&foreign).is_empty());
    assert_eq!(small.capacity(&foreign), 0);
    let mut small_cache = small.cache();
    small_cache.free(foreign);
    assert!(
        std::iter::from_fn(|| small_cache.alloc(30_000).or_else(|| small_cache.alloc(64)))
            .all(|f| small.owns(&f)),
        "a foreign index never enters the free lists"
    );
}

fn pool_with_frames(frames: u32) -> Arc<FramePool> {
    FramePool::new(&PoolConfig {
        frames,
        ..PoolConfig::small_for_tests()
    })
    .unwrap()
}

#[test]
fn exhaustion_is_reported_not_fatal() {
    let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
    let mut cache = pool.cache();
    let mut held = Vec::new();
    while let Some(f) = cache.alloc(64) {
        held.push(f);
    }
    assert_eq!(held.len(), 512);
    for f in held {
        cache.free(f);
    }
    drop(cache);
    assert_eq!(pool.free_frames().0, 512);
}

fn pool_with_large(large_frames: u32) -> Arc<FramePool> {
    FramePool::new(&PoolConfig {
        large_frames,
        ..PoolConfig::small_for_tests()
    })
    .unwrap()
}

#[test]
fn large_frames_cycle_through_the_cache_not_the_shared_list() {
    let pool = pool_with_large(128);
    assert_eq!(pool.large_cache_max(), 4, "batches of 128 / 64");
    let mut cache = pool.cache();
    let mut held = vec![cache.alloc(60_000).unwrap(), cache.alloc(60_000).unwrap()];
    assert_eq!(pool.free_frames().1, 128 - 2, "one refill of a batch");
    let mut steady = None;
    for _ in 0..1000 {
        // A TSO frame in, a TSO frame out: once the cache has stock for
        // the three in flight, only the cache moves.
        held.push(cache.alloc(60_000).unwrap());
        cache.free(held.remove(0));
        let shared = pool.free_frames().1;
        assert_eq!(*steady.get_or_insert(shared), shared);
    }
    assert_eq!(steady, Some(128 - 4));
    for f in held {
        cache.free(f);
    }
    drop(cache);
    assert_eq!(pool.free_frames(), pool.total_frames());
}

#[test]
fn one_cache_cannot_hoard_the_large_class() {
    let pool = pool_with_large(128);
    let max = pool.large_cache_max();
    let mut a = pool.cache();
    let mut held = Vec::new();
    while let Some(f) = a.alloc(30_000) {
        held.push(f);
    }
    assert_eq!(held.len(), 128, "a cache can use the whole class");
    for f in held.drain(..) {
        a.free(f);
    }
    assert!(
        pool.free_frames().1 >= 128 - max,
        "{} back in the shared list",
        pool.free_frames().1
    );
    // Another engine gets every frame the first one does not keep.
    let mut b = pool.cache();
    while let Some(f) = b.alloc(30_000) {
        held.push(f);
    }
    assert!(held.len() >= 128 - max, "b got {}", held.len());
    for f in held {
        b.free(f);
    }
    drop((a, b));
    assert_eq!(pool.free_frames(), pool.total_frames());
}

#[test]
fn a_tiny_large_class_still_gets_a_cache() {
    let pool = pool_with_large(1);
    assert_eq!(pool.large_cache_max(), 2);
    let mut cache = pool.cache();
    let f = cache.alloc(60_000).unwrap();
    assert!(cache.alloc(60_000).is_none(), "exhaustion is a None");
    cache.free(f);
    let again = cache.alloc(60_000).expect("the freed frame comes back");
    cache.free(again);
}

#[test]
fn a_second_process_reads_the_same_frames_and_free_frames_move_between_them() {
    let cfg = PoolConfig::small_for_tests();
    let pool = FramePool::new(&cfg).unwrap();
    let mut cache = pool.cache();
    let mut frame = cache.alloc(100).unwrap();
    pool.frame_mut(&mut frame)[HEADROOM as usize..][..4].copy_from_slice(b"snap");
    let (index, offset) = (frame.index, frame.offset);

    let peer = FramePool::attach(&cfg, pool.memfd().try_clone_to_owned().unwrap()).unwrap();
    assert_eq!(peer.pages(), pool.pages());
    assert_eq!(peer.free_frames(), (0, 0), "the frames are the creator's");
    // The handle moves: the creator gives it up, the peer adopts it.
    let _given_up = frame;
    let adopted = peer.adopt(index, HEADROOM, 4).unwrap();
    assert_eq!(peer.bytes(&adopted), b"snap");
    assert!(
        peer.adopt(index, offset, 1 << 20).is_none(),
        "longer than the frame"
    );

    let (small, large) = pool.take_free(10, 2);
    assert_eq!((small.len(), large.len()), (10, 2));
    peer.give_free(&small, &large).unwrap();
    assert_eq!(peer.free_frames(), (10, 2));
    assert!(
        peer.give_free(&[cfg.frames], &[]).is_err(),
        "a large index as small"
    );
    assert!(peer.give_free(&[], &[0]).is_err(), "a small index as large");
    assert!(peer
        .give_free(&[], &[cfg.frames + cfg.large_frames])
        .is_err());
    assert_eq!(
        peer.free_frames(),
        (10, 2),
        "a refused hand-over takes nothing"
    );
}
