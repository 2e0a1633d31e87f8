//! The portable engine: a small pool of threads doing pread/pwrite.
//!
//! On drop the queue closes; threads finish the operations already queued and exit. The file
//! descriptor is shared through an `Arc` and closed by whichever thread lets go of it last.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use parking_lot::Mutex;

use super::{blocking_op, EngineKind, IoEngine, Op, OwnedFile};

pub(crate) struct PsyncEngine {
    tx: Mutex<Option<mpsc::Sender<Op>>>,
}

impl PsyncEngine {
    pub(crate) fn new(file: Arc<OwnedFile>, threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Op>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let file = file.clone();
            thread::Builder::new()
                .name(format!("vedge-psync-{i}"))
                .spawn(move || loop {
                    // Holding the lock while blocked in recv is what makes this a work queue:
                    // one idle thread waits on the channel, the others wait on the lock.
                    let op = rx.lock().recv();
                    let Ok(mut op) = op else { return };
                    let res = blocking_op(file.fd, op.kind, op.offset, &mut op.buf);
                    // A dropped receiver means the caller gave up; the buffer is freed here.
                    let _ = op.done.send((op.buf, res));
                })?;
        }
        Ok(PsyncEngine {
            tx: Mutex::new(Some(tx)),
        })
    }
}

impl IoEngine for PsyncEngine {
    fn submit(&self, op: Op) {
        if let Some(tx) = self.tx.lock().as_ref() {
            // Err only if every worker died; the dropped op's sender then reports "engine stopped".
            let _ = tx.send(op);
        }
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Psync
    }
}

impl Drop for PsyncEngine {
    fn drop(&mut self) {
        self.tx.lock().take();
    }
}
