//! The shuffle service protocol's oracle: `BlockTransferMessage`s and block ids from
//! arbitrary bytes.

use rpc_proto::shuffle::{executor_file_path, BlockId, BlockTransferMessage, FetchPlan};

/// Feeds `data` to the shuffle protocol's decoders and checks what each makes of it.
///
/// As bytes: what [`BlockTransferMessage::decode`] accepts re-encodes to exactly the bytes it
/// was read from (a prefix of the input: decoding ignores trailing bytes, as Spark does),
/// which decode to the same value.
///
/// As text (read lossily), split at newlines into ids: what [`BlockId::parse`] accepts writes
/// back to the same string (to its canonical form if it had leading zeros, which Spark
/// accepts too); a [`FetchPlan`] of the ids puts every id in exactly
/// one chunk; [`executor_file_path`] of an id stays in the dirs it was given.
///
/// # Panics
///
/// When an invariant does not hold.
pub fn shuffle(data: &[u8]) {
    // Any error is fine: not panicking and not over-allocating is what is checked then.
    if let Ok(message) = BlockTransferMessage::decode(data) {
        let again = message.encode();
        assert_eq!(again[0], data[0], "type byte changed");
        assert!(
            again.len() <= data.len() && again[..] == data[..again.len()],
            "{} did not re-encode to the bytes it was read from",
            message.name()
        );
        assert_eq!(
            BlockTransferMessage::decode(&again).as_ref(),
            Ok(&message),
            "round trip"
        );
    }

    let text = String::from_utf8_lossy(data);
    let ids: Vec<String> = text.split('\n').map(str::to_owned).collect();
    for id in &ids {
        if let Some(parsed) = BlockId::parse(id) {
            // Spark's parsers accept leading zeros ("shuffle_0_07_1" is map 7), so the text
            // written back is the canonical one, which reads back the same.
            let canonical = parsed.to_string();
            assert_eq!(
                BlockId::parse(&canonical),
                Some(parsed),
                "{id} -> {canonical}"
            );
            if !id
                .split('_')
                .skip(1)
                .any(|n| n.len() > 1 && n.starts_with('0'))
            {
                assert_eq!(&canonical, id, "block id does not write back");
            }
        }
        let dirs = ["/d0", "/d1", "/d2"];
        if let Some(path) = executor_file_path(&dirs, 7, id) {
            assert!(
                dirs.iter().any(|d| path.starts_with(d)),
                "{} escaped",
                path.display()
            );
        }
    }
    for old in [false, true] {
        if let Ok(plan) = FetchPlan::new("app", "exec", &ids, old) {
            let mut planned = plan.chunk_block_ids.clone();
            let mut given = ids.clone();
            planned.sort();
            given.sort();
            assert_eq!(planned, given, "a fetch plan lost or duplicated ids");
        }
    }
}
