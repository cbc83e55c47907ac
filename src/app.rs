//! The gateway's shared state, built once from the config.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::accounts::Accounts;
use crate::audit::Audit;
use crate::config::Config;
use crate::csrf::CsrfKey;
use crate::headers::IdentityHeaders;
use crate::passwords::HashPool;
use crate::policy::reload::PolicyHandle;
use crate::session::Sessions;
use crate::store::Store;
use crate::throttle::Throttle;
use crate::ui::Ui;

pub struct App {
    pub cfg: Config,
    pub policy: Arc<PolicyHandle>,
    pub store: Store,
    pub accounts: Accounts,
    pub sessions: Sessions,
    pub hasher: HashPool,
    pub throttle: Throttle,
    pub csrf: CsrfKey,
    pub csrf_cookie: String,
    pub device: crate::device::DeviceKey,
    /// The device cookie's name; it is scoped to the gateway's own paths,
    /// so the app never sees it.
    pub device_cookie: String,
    pub ui: Ui,
    pub headers: IdentityHeaders,
    pub audit: Audit,
    pub metrics: crate::metrics::Metrics,
    /// Bounds store writes that fsync, which run on blocking threads.
    blocking: Semaphore,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Ui(#[from] crate::ui::UiError),
    #[error("cannot open the audit file: {0}")]
    Audit(std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("background task failed: {0}")]
    Join(String),
}

impl App {
    pub fn new(cfg: Config, policy: Arc<PolicyHandle>, store: Store) -> Result<Self, AppError> {
        let csrf = CsrfKey::new(store.secret("csrf")?);
        let sessions = Sessions::new(
            Arc::new(store.clone()),
            cfg.session.idle_timeout,
            cfg.session.absolute_timeout,
            cfg.session.cache_entries,
        )
        .with_max_per_user(cfg.session.max_per_user);
        let accounts = Accounts::new(Arc::new(store.clone()));
        let ui = Ui::new(&cfg.ui, &cfg.server.prefix)?;
        let headers = IdentityHeaders::new(
            &cfg.headers,
            &cfg.user_fields,
            cfg.server.drop_underscore_headers,
            cfg.server.trusted_proxies.clone(),
        );
        let audit = Audit::with_webhook(cfg.log.audit_file.as_deref(), cfg.log.webhook.clone())
            .map_err(AppError::Audit)?;
        let csrf_cookie = if cfg.server.secure {
            "__Host-portcullis_csrf".to_string()
        } else {
            "portcullis_csrf".to_string()
        };
        let device = crate::device::DeviceKey::new(store.secret("device")?);
        // __Host- would need Path=/; __Secure- allows the narrower path.
        let device_cookie = if cfg.server.secure {
            "__Secure-portcullis_device".to_string()
        } else {
            "portcullis_device".to_string()
        };
        let metrics = crate::metrics::Metrics::new();
        Ok(App {
            throttle: Throttle::new(cfg.throttle.clone()),
            hasher: HashPool::for_this_machine().timed(metrics.password_check.clone()),
            metrics,
            cfg,
            policy,
            store,
            accounts,
            sessions,
            csrf,
            device,
            device_cookie,
            csrf_cookie,
            ui,
            headers,
            audit,
            blocking: Semaphore::new(8),
        })
    }

    /// Runs store work that may fsync on a blocking thread, with a bound on
    /// how many run at once.
    pub async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, BlockingError>
    where
        T: Send + 'static,
        F: FnOnce(&App) -> Result<T, crate::store::StoreError> + Send + 'static,
    {
        let _permit = self
            .blocking
            .acquire()
            .await
            .map_err(|e| BlockingError::Join(e.to_string()))?;
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| BlockingError::Join(e.to_string()))?
            .map_err(BlockingError::Store)
    }
}

impl App {
    /// Administration over this gateway's own state.
    pub fn ops(&self) -> crate::admin::Ops<'_> {
        crate::admin::Ops {
            accounts: &self.accounts,
            sessions: &self.sessions,
            rules: &self.cfg.passwords,
            custom_fields: &self.cfg.user_fields,
            throttle: Some(&self.throttle),
            audit: Some(&self.audit),
            policy: Some(&self.policy),
        }
    }
}
