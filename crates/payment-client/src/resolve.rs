//! Name resolution for the WeChat Pay agent, without a thread per request.
//!
//! ureq resolves the host of every request, even one that goes out on a
//! pooled keep-alive connection, and its default resolver enforces the
//! timeout by spawning a thread per lookup. Profiling the worker showed
//! that thread (creation, stack, signals, the hand-over) as one of the
//! largest costs of a settlement besides the RSA signature. This resolver
//! answers an IP address literal directly and keeps the answer for a host
//! name for [`RESOLVED_TTL`]; a lookup that is due goes to ureq's resolver,
//! with its timeout.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long the addresses of a host name are reused: short enough that a
/// DNS change (WeChat Pay moving a domain) is followed within a minute.
pub const RESOLVED_TTL: Duration = Duration::from_secs(30);

/// A resolver that answers IP literals at once and caches host names.
#[derive(Default)]
pub struct CachingResolver {
    inner: DefaultResolver,
    cache: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl fmt::Debug for CachingResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingResolver").finish_non_exhaustive()
    }
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            // Not a full URL: let ureq say what is wrong with it.
            return self.inner.resolve(uri, config, timeout);
        };
        let Some(key) = DefaultResolver::host_and_port(scheme, authority) else {
            return self.inner.resolve(uri, config, timeout);
        };
        let host = authority.host();
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let (Ok(ip), Some(port)) = (literal.parse::<IpAddr>(), port_of(&key)) {
            let mut out = self.empty();
            out.push(SocketAddr::new(ip, port));
            return Ok(out);
        }
        if let Some(addrs) = self.cached(&key) {
            return Ok(addrs);
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        if let Ok(mut cache) = self.cache.lock() {
            let _ = cache.insert(key, (Instant::now(), addrs.clone()));
        }
        Ok(addrs)
    }
}

impl CachingResolver {
    fn cached(&self, key: &str) -> Option<ResolvedSocketAddrs> {
        let cache = self.cache.lock().ok()?;
        let (at, addrs) = cache.get(key)?;
        (at.elapsed() < RESOLVED_TTL).then(|| addrs.clone())
    }
}

fn port_of(host_and_port: &str) -> Option<u16> {
    host_and_port.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(r: &CachingResolver, url: &str) -> Vec<SocketAddr> {
        let uri: Uri = url.parse().unwrap();
        let config = Config::default();
        let timeout = NextTimeout {
            after: std::time::Duration::from_secs(5).into(),
            reason: ureq::Timeout::Resolve,
            per_read: None,
            per_write: None,
        };
        r.resolve(&uri, &config, timeout).unwrap().to_vec()
    }

    #[test]
    fn ip_literals_are_answered_without_a_lookup_and_names_are_cached() {
        let r = CachingResolver::default();
        assert_eq!(
            resolve(&r, "http://127.0.0.1:8080/v3/pay"),
            vec!["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            resolve(&r, "https://[::1]/v3/pay"),
            vec!["[::1]:443".parse::<SocketAddr>().unwrap()]
        );
        assert!(
            r.cache.lock().unwrap().is_empty(),
            "literals are not cached"
        );
        let first = resolve(&r, "http://localhost:9/x");
        assert!(!first.is_empty());
        assert_eq!(r.cache.lock().unwrap().len(), 1);
        assert_eq!(resolve(&r, "http://localhost:9/y"), first);
    }
}
