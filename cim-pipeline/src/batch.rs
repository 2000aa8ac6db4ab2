//! [`Gather`]: results in order for a batch of which some items are decided at once and the
//! rest are handed on together, which is what every batching stage does (a connection's sends,
//! the pipeline's admission, the store stage).

use cim_core::{Error, Result};

/// Collects one result per item, in the items' order: some decided at once, the others filled
/// in from a batch call made afterwards with the deferred items, in order.
#[derive(Debug)]
pub struct Gather<T> {
    results: Vec<Option<Result<T>>>,
    deferred: Vec<usize>,
}

impl<T> Gather<T> {
    /// Room for `items` results.
    pub fn with_capacity(items: usize) -> Self {
        Gather {
            results: Vec::with_capacity(items),
            deferred: Vec::new(),
        }
    }

    /// The next item's result, decided now.
    pub fn decided(&mut self, result: Result<T>) {
        self.results.push(Some(result));
    }

    /// The next item's result comes from the batch.
    pub fn deferred(&mut self) {
        self.deferred.push(self.results.len());
        self.results.push(None);
    }

    /// Whether any item waits for the batch.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Every item's result, in order: `batch` answers the deferred items in order. A deferred
    /// item `batch` did not answer gets an `Internal` error (a batch call that broke its
    /// contract), never a panic.
    pub fn finish(mut self, batch: impl IntoIterator<Item = Result<T>>) -> Vec<Result<T>> {
        for (position, result) in self.deferred.into_iter().zip(batch) {
            self.results[position] = Some(result);
        }
        self.results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(Error::internal(
                        "a batch call answered fewer items than it was given",
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_core::ErrorKind;

    #[test]
    fn results_come_back_in_item_order_and_a_short_batch_is_an_internal_error() {
        let mut gather = Gather::with_capacity(4);
        gather.deferred();
        gather.decided(Err(Error::invalid_input("bad")));
        gather.deferred();
        gather.deferred();
        assert!(gather.has_deferred());
        let results = gather.finish([Ok(1), Ok(2)]);
        let kinds: Vec<_> = results
            .iter()
            .map(|result| result.as_ref().map_err(|e| e.kind()).copied())
            .collect();
        assert_eq!(
            kinds,
            [
                Ok(1),
                Err(ErrorKind::InvalidInput),
                Ok(2),
                Err(ErrorKind::Internal)
            ]
        );
    }
}
