//! Decoding an export file: gunzip and NDJSON parsing on a blocking thread, fed by the async
//! download through a channel and handing over batches of profiles through another.

use std::io::{self, BufRead, Read};

use bytes::Bytes;

use crate::users::auth0_user::{Auth0User, Unusable};

pub(super) struct Batch {
    pub(super) users: Vec<Auth0User>,
    pub(super) unusable: Vec<Unusable>,
    pub(super) lines_read: u64,
    pub(super) lines_in_batch: u64,
}

/// Gunzips and parses NDJSON on a blocking thread, handing over batches through a bounded
/// channel (the back-pressure that keeps memory flat). Returns the number of lines read.
pub(super) fn decode_export(
    reader: ChannelReader,
    skip: u64,
    batch_size: usize,
    out: &tokio::sync::mpsc::Sender<Batch>,
) -> io::Result<u64> {
    let mut lines =
        io::BufReader::with_capacity(64 * 1024, flate2::read::MultiGzDecoder::new(reader));
    let mut line = String::new();
    let mut read = 0u64;
    let mut batch = Vec::with_capacity(batch_size);
    let mut unusable = Vec::new();
    let mut batch_lines = 0u64;
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            break;
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        read += 1;
        if read <= skip {
            continue;
        }
        batch_lines += 1;
        match Auth0User::parse(text) {
            Ok(user) => batch.push(user),
            Err(err) => unusable.push(err),
        }
        if batch.len() + unusable.len() >= batch_size {
            let full = Batch {
                users: std::mem::replace(&mut batch, Vec::with_capacity(batch_size)),
                unusable: std::mem::take(&mut unusable),
                lines_read: read,
                lines_in_batch: std::mem::take(&mut batch_lines),
            };
            if out.blocking_send(full).is_err() {
                return Err(io::Error::other("the sync stopped reading the export"));
            }
        }
    }
    if !batch.is_empty() || !unusable.is_empty() {
        let last = Batch {
            users: batch,
            unusable,
            lines_read: read,
            lines_in_batch: batch_lines,
        };
        if out.blocking_send(last).is_err() {
            return Err(io::Error::other("the sync stopped reading the export"));
        }
    }
    Ok(read)
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
