//! One named case of the suite, and the harness it runs with.

use std::future::Future;
use std::sync::Arc;

use cim_core::{
    AccountCapabilities, AccountStore, BalancerCapabilities, LoadBalancer, MessageCapabilities,
    MessageStore, MetaCapabilities, MetaStore, SessionCapabilities, SessionStore,
};
use futures::future::BoxFuture;

use crate::suite::{CaseContext, Maker};

/// A trait the suite tests: its name and how to read its capabilities.
pub trait Subject: Send + Sync + 'static {
    /// The capabilities type of the trait.
    type Caps: Copy + Send + Sync + std::fmt::Debug + 'static;
    /// The trait's name as used in case names (`meta_store`...).
    const NAME: &'static str;
    /// The capabilities an instance declares.
    fn caps(&self) -> Self::Caps;
}

impl Subject for dyn MetaStore {
    type Caps = MetaCapabilities;
    const NAME: &'static str = "meta_store";
    fn caps(&self) -> MetaCapabilities {
        self.capabilities()
    }
}

impl Subject for dyn SessionStore {
    type Caps = SessionCapabilities;
    const NAME: &'static str = "session_store";
    fn caps(&self) -> SessionCapabilities {
        self.capabilities()
    }
}

impl Subject for dyn AccountStore {
    type Caps = AccountCapabilities;
    const NAME: &'static str = "account_store";
    fn caps(&self) -> AccountCapabilities {
        self.capabilities()
    }
}

impl Subject for dyn MessageStore {
    type Caps = MessageCapabilities;
    const NAME: &'static str = "message_store";
    fn caps(&self) -> MessageCapabilities {
        self.capabilities()
    }
}

impl Subject for dyn LoadBalancer {
    type Caps = BalancerCapabilities;
    const NAME: &'static str = "load_balancer";
    fn caps(&self) -> BalancerCapabilities {
        self.capabilities()
    }
}

/// What a case is handed: the context of its run and a way to build stores.
pub struct Harness<T: ?Sized + Subject> {
    ctx: CaseContext,
    maker: Maker<T>,
}

impl<T: ?Sized + Subject> Clone for Harness<T> {
    fn clone(&self) -> Self {
        Harness {
            ctx: self.ctx.clone(),
            maker: self.maker.clone(),
        }
    }
}

impl<T: ?Sized + Subject> Harness<T> {
    pub(crate) fn new(ctx: CaseContext, maker: Maker<T>) -> Self {
        Harness { ctx, maker }
    }

    /// The case's context (namespace, TTL).
    pub fn ctx(&self) -> &CaseContext {
        &self.ctx
    }

    /// A fresh store in the case's namespace. Panics (failing the case) if the factory fails.
    ///
    /// Two calls in one case share the namespace: with a networked backend they see the same
    /// data (two cim nodes); with an in-process one they may not, so cases use one store unless
    /// they test what two nodes see.
    pub async fn store(&self) -> Arc<T> {
        match (self.maker)(self.ctx.clone()).await {
            Ok(store) => store,
            Err(e) => panic!("the factory could not build a store: {e}"),
        }
    }
}

/// A named case: what it requires of the capabilities, and how to run it.
pub struct Case<T: ?Sized + Subject> {
    /// The case's name, a behaviour (`bind_reject_keeps_the_first_session`).
    pub name: &'static str,
    /// Whether a backend with these capabilities must pass this case.
    pub requires: fn(&T::Caps) -> bool,
    /// Runs the case; a panic (a failed assertion) fails it.
    pub run: fn(Harness<T>) -> BoxFuture<'static, ()>,
}

impl<T: ?Sized + Subject> Case<T> {
    /// A case every backend must pass.
    pub fn always(name: &'static str, run: fn(Harness<T>) -> BoxFuture<'static, ()>) -> Self {
        Case {
            name,
            requires: |_| true,
            run,
        }
    }

    /// A case for backends whose capabilities satisfy `requires`.
    pub fn when(
        name: &'static str,
        requires: fn(&T::Caps) -> bool,
        run: fn(Harness<T>) -> BoxFuture<'static, ()>,
    ) -> Self {
        Case {
            name,
            requires,
            run,
        }
    }
}

/// Boxes a case function's future: `Case::always("name", |h| boxed(name(h)))`.
pub fn boxed<F: Future<Output = ()> + Send + 'static>(future: F) -> BoxFuture<'static, ()> {
    Box::pin(future)
}
