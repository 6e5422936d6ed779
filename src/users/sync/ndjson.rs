//! Decoding an export file: gunzip and NDJSON parsing on a blocking thread, fed by the async
//! download through a channel and handing over batches of profiles through another.

use std::io::{self, BufRead, Read};

use bytes::Bytes;

use crate::users::auth0_user::{Auth0User, Unusable};

/// Consecutive lines of the file, parsed.
pub(super) struct Batch {
    /// 0 for the first batch of a download, then 1, 2, ...
    pub(super) seq: u64,
    pub(super) users: Vec<Auth0User>,
    pub(super) unusable: Vec<Unusable>,
    /// Lines of the file read up to the end of this batch.
    pub(super) lines_read: u64,
}

/// Gunzips and parses NDJSON on a blocking thread, handing over batches of `batch_size` lines
/// through a bounded channel (the back-pressure that keeps memory flat). The first `skip` lines
/// are read past (a resumed download). A line that is not a profile that can be stored (not
/// UTF-8, not JSON, no `user_id`) is handed over as unusable: it never stops the file. Returns
/// the number of lines read.
pub(super) fn decode_export(
    reader: ChannelReader,
    skip: u64,
    batch_size: usize,
    out: &tokio::sync::mpsc::Sender<Batch>,
) -> io::Result<u64> {
    let mut lines =
        io::BufReader::with_capacity(64 * 1024, flate2::read::MultiGzDecoder::new(reader));
    let mut line = Vec::new();
    let mut read = 0u64;
    let mut next = Batch::new(0, batch_size);
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = std::str::from_utf8(&line).map(str::trim);
        if text.is_ok_and(str::is_empty) {
            continue;
        }
        read += 1;
        if read <= skip {
            continue;
        }
        match text
            .map_err(|_| Unusable::not_text())
            .and_then(Auth0User::parse)
        {
            Ok(user) => next.users.push(user),
            Err(err) => next.unusable.push(err),
        }
        if next.users.len() + next.unusable.len() >= batch_size {
            let seq = next.seq + 1;
            let full = std::mem::replace(&mut next, Batch::new(seq, batch_size));
            send(out, full, read)?;
        }
    }
    if !next.users.is_empty() || !next.unusable.is_empty() {
        send(out, next, read)?;
    }
    Ok(read)
}

impl Batch {
    fn new(seq: u64, batch_size: usize) -> Self {
        Self {
            seq,
            users: Vec::with_capacity(batch_size),
            unusable: Vec::new(),
            lines_read: 0,
        }
    }
}

fn send(out: &tokio::sync::mpsc::Sender<Batch>, mut batch: Batch, read: u64) -> io::Result<()> {
    batch.lines_read = read;
    out.blocking_send(batch)
        .map_err(|_| io::Error::other("the sync stopped reading the export"))
}

/// `Read` over chunks arriving on a channel from the async download.
pub(super) struct ChannelReader {
    pub(super) rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    pub(super) current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(err)) => return Err(err),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
