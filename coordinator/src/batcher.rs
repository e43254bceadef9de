//! Batching of protocol messages to one participant, the way group commit batches flushes.
//!
//! Every message that is ready while the calls in flight are busy goes out together in the next call:
//! one round trip, one HTTP/2 frame set and one wake-up of each side for many transactions, where a
//! call per message cost more CPU than the protocol's own work (five unary RPCs per change capped two
//! cores near 6,000 changes/s before anything else ran). A batch never waits for company: a message
//! that arrives when a call slot is free leaves at once, alone if nothing else is ready, so a lone
//! client's latency does not grow.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

type Pending<Req, Resp> = (Req, oneshot::Sender<Result<Resp, String>>);

/// A queue in front of one batched RPC. Cloning shares the queue.
pub struct Batcher<Req, Resp> {
    queue: mpsc::UnboundedSender<Pending<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the batching task. `call` sends one batch and returns one result per request, in order
    /// (or one error for the whole batch); at most `in_flight` calls run at once, each with at most
    /// `max_batch` requests.
    pub fn start<F, Fut>(in_flight: usize, max_batch: usize, call: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Result<Resp, String>>, String>> + Send + 'static,
    {
        let (queue, mut rx) = mpsc::unbounded_channel::<Pending<Req, Resp>>();
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Wait for a free call slot; what arrives meanwhile joins this batch.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < max_batch.max(1) {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (requests, replies): (Vec<Req>, Vec<_>) = batch.into_iter().unzip();
                let sent = call(requests);
                tokio::spawn(async move {
                    let results = sent.await;
                    drop(slot);
                    match results {
                        Ok(results) if results.len() == replies.len() => {
                            for (reply, result) in replies.into_iter().zip(results) {
                                let _ = reply.send(result);
                            }
                        }
                        Ok(results) => {
                            let error = format!(
                                "the participant answered {} of {} requests",
                                results.len(),
                                replies.len()
                            );
                            for reply in replies {
                                let _ = reply.send(Err(error.clone()));
                            }
                        }
                        Err(error) => {
                            for reply in replies {
                                let _ = reply.send(Err(error.clone()));
                            }
                        }
                    }
                });
            }
        });
        Self { queue }
    }

    /// Queues `request` for the next batch and waits for its own result.
    pub async fn send(&self, request: Req) -> Result<Resp, String> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((request, reply))
            .map_err(|_| "the batcher stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the batcher dropped the request".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn what_arrives_while_a_call_is_busy_goes_in_the_next_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::start(1, 100, move |batch: Vec<u32>| {
            seen.lock().unwrap().push(batch.len());
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(batch.into_iter().map(|n| Ok(n * 2)).collect())
            }
        });
        // A lone request leaves at once, alone.
        assert_eq!(batcher.send(1).await, Ok(2));
        // While one call is busy, nine arrive: they wait for the slot and go together.
        let busy = {
            let b = batcher.clone();
            tokio::spawn(async move { b.send(100).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let calls: Vec<_> = (0..9)
            .map(|n| {
                let b = batcher.clone();
                tokio::spawn(async move { b.send(n).await })
            })
            .collect();
        assert_eq!(busy.await.unwrap(), Ok(200));
        for (n, call) in calls.into_iter().enumerate() {
            assert_eq!(
                call.await.unwrap(),
                Ok(n as u32 * 2),
                "each gets its own result"
            );
        }
        assert_eq!(*sizes.lock().unwrap(), [1, 1, 9]);
    }

    #[tokio::test]
    async fn a_failed_call_fails_each_of_its_requests_and_batches_are_capped() {
        let batcher = Batcher::start(1, 3, |batch: Vec<u32>| async move {
            if batch.len() > 3 {
                return Ok(Vec::new());
            }
            Err::<Vec<Result<u32, String>>, _>("unreachable".to_owned())
        });
        let calls: Vec<_> = (0..7)
            .map(|n| {
                let b = batcher.clone();
                tokio::spawn(async move { b.send(n).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), Err("unreachable".to_owned()));
        }
    }
}
