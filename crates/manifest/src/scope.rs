//! Which URLs an asset may reference: by default the asset's own origin (scheme, host, port)
//! and the directory of its root manifest (or the directory being ingested). A reference that
//! escapes (`../` above the directory, another host) is refused unless explicitly allowed, so a
//! crafted or broken manifest cannot make the edge pull and pin arbitrary content.

use url::Url;

use super::WalkError;

/// Scope settings, from the CLI or the admin request.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Allow references to other origins (scheme, host or port).
    pub allow_other_hosts: bool,
    /// Allow references outside the asset's directory on the same origin.
    pub allow_outside_dir: bool,
    /// The directory that bounds the asset; default: the root manifest's directory.
    pub root_dir: Option<Url>,
}

/// A [`Scope`] bound to one asset.
#[derive(Debug, Clone)]
pub struct AssetScope {
    settings: Scope,
    origin: url::Origin,
    scheme_host: (String, Option<String>, Option<u16>),
    dir: String,
}

impl Scope {
    pub fn for_asset(&self, asset: &Url) -> AssetScope {
        let base = self.root_dir.as_ref().unwrap_or(asset);
        let path = base.path();
        let dir = match path.rfind('/') {
            Some(i) => path[..=i].to_string(),
            None => "/".to_string(),
        };
        AssetScope {
            settings: self.clone(),
            origin: base.origin(),
            scheme_host: (
                base.scheme().to_string(),
                base.host_str().map(str::to_string),
                base.port_or_known_default(),
            ),
            dir,
        }
    }
}

impl AssetScope {
    fn same_origin(&self, url: &Url) -> bool {
        if self.origin.is_tuple() {
            url.origin() == self.origin
        } else {
            // file: URLs have opaque origins; compare the parts instead.
            (
                url.scheme().to_string(),
                url.host_str().map(str::to_string),
                url.port_or_known_default(),
            ) == self.scheme_host
        }
    }

    /// `Ok` when `url` (found in `parent`) may be fetched.
    pub fn check(&self, url: &Url, parent: &Url) -> Result<(), WalkError> {
        let escape = || WalkError::Escape {
            reference: url.to_string(),
            parent: parent.clone(),
            scope: self.describe(),
        };
        if !self.same_origin(url) {
            return if self.settings.allow_other_hosts {
                Ok(())
            } else {
                Err(escape())
            };
        }
        if !url.path().starts_with(&self.dir) && !self.settings.allow_outside_dir {
            return Err(escape());
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        let (scheme, host, port) = &self.scheme_host;
        match (host, port) {
            (Some(h), Some(p)) => format!("{scheme}://{h}:{p}{}", self.dir),
            (Some(h), None) => format!("{scheme}://{h}{}", self.dir),
            _ => format!("{scheme}://{}", self.dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).expect("test url")
    }

    #[test]
    fn dot_dot_and_other_hosts_escape() {
        let asset = u("http://o.example/vod/a/master.m3u8");
        let s = Scope::default().for_asset(&asset);
        assert!(s
            .check(&asset.join("v0/x.ts").expect("join"), &asset)
            .is_ok());
        assert!(s
            .check(&asset.join("../b/x.ts").expect("join"), &asset)
            .is_err());
        assert!(s
            .check(&asset.join("%2e%2e/b/x.ts").expect("join"), &asset)
            .is_err());
        assert!(s
            .check(&asset.join("/other/x.ts").expect("join"), &asset)
            .is_err());
        assert!(s
            .check(&u("http://evil.example/vod/a/x.ts"), &asset)
            .is_err());
        assert!(s
            .check(&u("http://o.example:81/vod/a/x.ts"), &asset)
            .is_err());
        assert!(s.check(&u("https://o.example/vod/a/x.ts"), &asset).is_err());
        let allow = Scope {
            allow_other_hosts: true,
            allow_outside_dir: true,
            root_dir: None,
        }
        .for_asset(&asset);
        assert!(allow.check(&u("http://evil.example/x.ts"), &asset).is_ok());
        assert!(allow
            .check(&asset.join("../b/x.ts").expect("join"), &asset)
            .is_ok());
    }

    #[test]
    fn file_urls_are_bounded_by_the_root_dir() {
        let asset = u("file:///srv/vod/a/master.m3u8");
        let s = Scope {
            root_dir: Some(u("file:///srv/vod/")),
            ..Scope::default()
        }
        .for_asset(&asset);
        assert!(s
            .check(&u("file:///srv/vod/shared/init.mp4"), &asset)
            .is_ok());
        assert!(s.check(&u("file:///etc/passwd"), &asset).is_err());
        assert!(s.check(&u("http://o.example/srv/vod/x"), &asset).is_err());
    }
}
