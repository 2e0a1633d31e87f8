//! DASH SegmentTemplate identifiers (ISO/IEC 23009-1 5.3.9.4.4): `$RepresentationID$`,
//! `$Number$`, `$Time$`, `$Bandwidth$`, `$SubNumber$`, `$$`, with `%0<width>d` format tags on
//! the numeric ones.

/// Values substituted into one template.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vars<'a> {
    pub representation_id: &'a str,
    pub bandwidth: Option<u64>,
    pub number: Option<u64>,
    pub time: Option<u64>,
}

/// Why a template cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unterminated $ identifier")]
    Unterminated,
    #[error("unknown identifier ${0}$")]
    Unknown(String),
    #[error("${0}$ has no value here")]
    Missing(&'static str),
    #[error("bad format tag {0:?}")]
    BadFormat(String),
}

/// Widest zero padding accepted (a crafted `%0999999999d` must not allocate gigabytes).
const MAX_WIDTH: usize = 32;

/// Expands `template` with `vars`.
pub fn expand(template: &str, vars: &Vars<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let j = after.find('$').ok_or(TemplateError::Unterminated)?;
        let ident = &after[..j];
        rest = &after[j + 1..];
        if ident.is_empty() {
            out.push('$');
            continue;
        }
        let (name, format) = match ident.find('%') {
            Some(k) => (&ident[..k], Some(&ident[k..])),
            None => (ident, None),
        };
        let value = match name {
            "RepresentationID" => {
                if format.is_some() {
                    return Err(TemplateError::BadFormat(ident.to_string()));
                }
                out.push_str(vars.representation_id);
                continue;
            }
            "Number" => vars.number.ok_or(TemplateError::Missing("Number"))?,
            "Time" => vars.time.ok_or(TemplateError::Missing("Time"))?,
            "Bandwidth" => vars.bandwidth.ok_or(TemplateError::Missing("Bandwidth"))?,
            "SubNumber" => return Err(TemplateError::Missing("SubNumber")),
            other => return Err(TemplateError::Unknown(other.to_string())),
        };
        let width = match format {
            None => 0,
            Some(f) => parse_width(f).ok_or_else(|| TemplateError::BadFormat(f.to_string()))?,
        };
        out.push_str(&format!("{value:0width$}"));
    }
    out.push_str(rest);
    Ok(out)
}

/// `%d`, `%5d`, `%05d` -> width. Padding is with zeros either way (as dash.js does).
fn parse_width(f: &str) -> Option<usize> {
    let digits = f.strip_prefix('%')?.strip_suffix('d')?;
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 3 {
        return None;
    }
    let w: usize = digits.parse().ok()?;
    (w <= MAX_WIDTH).then_some(w)
}

/// True when the template uses `$Number$` or `$Time$` (so it addresses many segments).
pub fn is_indexed(template: &str) -> bool {
    template.contains("$Number") || template.contains("$Time")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v() -> Vars<'static> {
        Vars {
            representation_id: "v1",
            bandwidth: Some(160000),
            number: Some(7),
            time: Some(49152),
        }
    }

    #[test]
    fn identifiers_and_widths() {
        let e = |t: &str| expand(t, &v());
        assert_eq!(
            e("c-$RepresentationID$-$Number%05d$.m4s").as_deref(),
            Ok("c-v1-00007.m4s")
        );
        assert_eq!(e("$Time$.m4s").as_deref(), Ok("49152.m4s"));
        assert_eq!(e("$Bandwidth$/$Number$").as_deref(), Ok("160000/7"));
        assert_eq!(e("a$$b").as_deref(), Ok("a$b"));
        assert_eq!(e("$Number%d$").as_deref(), Ok("7"));
        assert_eq!(e("$Number%3d$").as_deref(), Ok("007"));
        assert!(matches!(e("$Nope$"), Err(TemplateError::Unknown(_))));
        assert!(matches!(e("$Number"), Err(TemplateError::Unterminated)));
        assert!(matches!(
            e("$Number%0999d$"),
            Err(TemplateError::BadFormat(_))
        ));
        let init = Vars {
            representation_id: "a",
            ..Vars::default()
        };
        assert!(matches!(
            expand("$Number$", &init),
            Err(TemplateError::Missing("Number"))
        ));
    }

    proptest! {
        #[test]
        fn never_panics_and_plain_text_is_kept(t in ".{0,40}") {
            let r = expand(&t, &v());
            if !t.contains('$') {
                prop_assert_eq!(r.as_deref(), Ok(t.as_str()));
            }
        }
    }
}
