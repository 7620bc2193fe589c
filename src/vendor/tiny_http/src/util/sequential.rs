use std::io::Result as IoResult;
use std::io::{BufWriter, Write};

use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

pub struct SequentialWriterBuilder<W>
where
    W: Write + Send,
{
    writer: Arc<Mutex<W>>,
    next_trigger: Option<Receiver<()>>,
}

pub struct SequentialWriter<W>
where
    W: Write + Send,
{
    trigger: Option<Receiver<()>>,
    writer: Arc<Mutex<W>>,
    on_finish: Sender<()>,
}

impl<W: Write + Send> SequentialWriterBuilder<W> {
    pub fn new(writer: W) -> SequentialWriterBuilder<W> {
        SequentialWriterBuilder {
            writer: Arc::new(Mutex::new(writer)),
            next_trigger: None,
        }
    }
}

impl<W: Write + Send> Iterator for SequentialWriterBuilder<W> {
    type Item = SequentialWriter<W>;
    fn next(&mut self) -> Option<SequentialWriter<W>> {
        let (tx, rx) = channel();
        let mut next_next_trigger = Some(rx);
        ::std::mem::swap(&mut next_next_trigger, &mut self.next_trigger);

        Some(SequentialWriter {
            trigger: next_next_trigger,
            writer: self.writer.clone(),
            on_finish: tx,
        })
    }
}

impl<W: Write + Send> Write for SequentialWriter<W> {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        if let Some(v) = self.trigger.as_mut() {
            // peerix patch: the previous writer always signals when it is
            // dropped; a lost signal is no reason to panic.
            let _ = v.recv();
        }
        self.trigger = None;

        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        if let Some(v) = self.trigger.as_mut() {
            // peerix patch: the previous writer always signals when it is
            // dropped; a lost signal is no reason to panic.
            let _ = v.recv();
        }
        self.trigger = None;

        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush()
    }
}

impl<W> Drop for SequentialWriter<W>
where
    W: Write + Send,
{
    fn drop(&mut self) {
        self.on_finish.send(()).ok();
    }
}

/// peerix patch: the writer of a response, which tells how many bytes
/// written to it have not reached the socket yet.
pub trait Sink: Write + Send {
    /// Bytes held in the buffer, not yet written to the socket.
    fn pending(&self) -> usize;
}

impl<W: Write + Send> Sink for SequentialWriter<BufWriter<W>> {
    fn pending(&self) -> usize {
        self.writer
            .lock()
            .map_or_else(|e| e.into_inner().buffer().len(), |w| w.buffer().len())
    }
}
