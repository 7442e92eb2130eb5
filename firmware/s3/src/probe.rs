//! The probe: an object_store [`HttpConnector`] around its reqwest client that reads the
//! status and the S3 error `Code`/`Message` of every non-2xx answer and hands them to the
//! operation that is waiting for it, through a task-local slot.
//!
//! Why: object_store turns a refused request into an error whose status and body it keeps
//! in a type that is private to it (only its `Display` text reaches us). The S3 code is what
//! tells `SignatureDoesNotMatch` from `AccessDenied` (both 403) or `NoSuchBucket` from
//! `NoSuchKey` (both 404), so we read it here, once, as data.
//!
//! The body of an error answer is read up to [`MAX_ERROR_BODY`] bytes and passed on unchanged
//! (object_store still sees it); bodies of successful answers are never touched.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http_body::Body;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpResponseBody, HttpService,
    ReqwestConnector,
};

/// Error bodies longer than this are cut (S3 error documents are a few hundred bytes).
pub(crate) const MAX_ERROR_BODY: usize = 64 << 10;

/// What the server answered to a refused request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) status: u16,
    /// The S3 error code (`NoSuchBucket`...), empty when the answer had no body (HEAD).
    pub(crate) code: String,
    pub(crate) message: String,
}

/// The slot an operation reads after object_store returns: the last fault seen.
pub(crate) type Slot = Arc<Mutex<Option<Fault>>>;

tokio::task_local! {
    static SLOT: Slot;
}

/// Runs `fut` with a fresh slot and returns its output with the last fault it saw.
pub(crate) async fn observe<T>(fut: impl std::future::Future<Output = T>) -> (T, Option<Fault>) {
    let slot: Slot = Arc::new(Mutex::new(None));
    let out = SLOT.scope(slot.clone(), fut).await;
    let fault = slot.lock().map(|mut g| g.take()).unwrap_or(None);
    (out, fault)
}

/// Records `fault` for the operation running on this task, if any.
fn record(fault: Fault) {
    let _ = SLOT.try_with(|slot| {
        if let Ok(mut g) = slot.lock() {
            *g = Some(fault);
        }
    });
}

/// object_store's reqwest connector with the probe around the client it builds.
#[derive(Debug, Default)]
pub(crate) struct ProbeConnector;

impl HttpConnector for ProbeConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(ProbeService { inner }))
    }
}

#[derive(Debug)]
struct ProbeService {
    inner: HttpClient,
}

#[async_trait::async_trait]
impl HttpService for ProbeService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let resp = self.inner.execute(req).await?;
        if resp.status().is_success() || resp.status().is_redirection() {
            return Ok(resp);
        }
        let (parts, mut body) = resp.into_parts();
        let bytes = read_bounded(&mut body, MAX_ERROR_BODY).await?;
        let text = String::from_utf8_lossy(&bytes);
        record(Fault {
            status: parts.status.as_u16(),
            code: crate::xml::field(&text, "Code").unwrap_or_default(),
            message: crate::xml::field(&text, "Message").unwrap_or_default(),
        });
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::from(bytes)))
    }
}

/// Reads at most `limit` bytes of `body` (the rest is dropped with the connection).
pub(crate) async fn read_bounded(body: &mut HttpResponseBody, limit: usize) -> Result<Bytes, HttpError> {
    let mut out = BytesMut::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    let room = limit.saturating_sub(out.len());
                    out.extend_from_slice(&data[..data.len().min(room)]);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
    }
    Ok(out.freeze())
}
