//! Structured Field Values (RFC 8941): the Dictionary parser the targeted cache-control fields
//! (`CDN-Cache-Control`, RFC 9213) are read with. Strict by design: any syntax error fails the
//! whole field, so the caller ignores it as a whole (RFC 9213 §2.2). Pure; bounded by its input.

/// A bare item (RFC 8941 §3.3).
#[derive(Debug, Clone, PartialEq)]
pub enum BareItem {
    Integer(i64),
    /// A Decimal, kept as thousandths (at most 12 integer and 3 fractional digits, so it fits).
    Decimal(i64),
    String(String),
    Token(String),
    ByteSequence(Vec<u8>),
    Boolean(bool),
}

/// Parameters of an item or inner list, in order (a repeated key keeps its last value in place).
pub type Parameters = Vec<(String, BareItem)>;

/// An item with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub bare: BareItem,
    pub params: Parameters,
}

/// A Dictionary member's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Member {
    Item(Item),
    InnerList(Vec<Item>, Parameters),
}

/// A parsed Dictionary, in order (a repeated key keeps its last value, RFC 8941 §4.2.2).
pub type Dictionary = Vec<(String, Member)>;

/// Why a field failed to parse (only the position is kept: callers ignore the field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub usize);

/// Parses a Dictionary field value (several field lines joined with `,` beforehand).
/// An empty value is an empty dictionary.
pub fn parse_dictionary(input: &str) -> Result<Dictionary, Invalid> {
    let mut p = Parser {
        s: input.as_bytes(),
        i: 0,
    };
    p.skip_sp();
    let mut dict: Dictionary = Vec::new();
    while !p.done() {
        let key = p.key()?;
        let member = if p.eat(b'=') {
            p.item_or_inner_list()?
        } else {
            Member::Item(Item {
                bare: BareItem::Boolean(true),
                params: p.parameters()?,
            })
        };
        match dict.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = member,
            None => dict.push((key, member)),
        }
        p.skip_ows();
        if p.done() {
            return Ok(dict);
        }
        if !p.eat(b',') {
            return Err(p.invalid());
        }
        p.skip_ows();
        if p.done() {
            // A trailing comma.
            return Err(p.invalid());
        }
    }
    Ok(dict)
}

/// Parses a List field value (RFC 8941 §4.2.1) and returns where each member is in `input`
/// (its item or inner list with parameters, without the surrounding whitespace or commas), for
/// callers that keep members verbatim (a `Cache-Status` list an upstream cache sent). An empty
/// value is an empty list; any syntax error fails the whole value.
pub fn list_member_spans(input: &str) -> Result<Vec<std::ops::Range<usize>>, Invalid> {
    Ok(parse_list(input)?
        .into_iter()
        .map(|(span, _)| span)
        .collect())
}

/// Parses a List field value: each member with where it is in `input` (as `list_member_spans`).
pub fn parse_list(input: &str) -> Result<Vec<(std::ops::Range<usize>, Member)>, Invalid> {
    let mut p = Parser {
        s: input.as_bytes(),
        i: 0,
    };
    p.skip_sp();
    let mut members = Vec::new();
    while !p.done() {
        let start = p.i;
        let member = p.item_or_inner_list()?;
        members.push((start..p.i, member));
        p.skip_ows();
        if p.done() {
            return Ok(members);
        }
        if !p.eat(b',') {
            return Err(p.invalid());
        }
        p.skip_ows();
        if p.done() {
            return Err(p.invalid());
        }
    }
    Ok(members)
}

impl Member {
    /// The member's parameters (an item's, or an inner list's own).
    pub fn params(&self) -> &Parameters {
        match self {
            Member::Item(item) => &item.params,
            Member::InnerList(_, params) => params,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn invalid(&self) -> Invalid {
        Invalid(self.i)
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn item_or_inner_list(&mut self) -> Result<Member, Invalid> {
        if self.peek() == Some(b'(') {
            self.inner_list()
        } else {
            self.item().map(Member::Item)
        }
    }

    fn inner_list(&mut self) -> Result<Member, Invalid> {
        self.i += 1; // '('
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            if self.eat(b')') {
                let params = self.parameters()?;
                return Ok(Member::InnerList(items, params));
            }
            items.push(self.item()?);
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return Err(self.invalid());
            }
        }
    }

    fn item(&mut self) -> Result<Item, Invalid> {
        let bare = self.bare_item()?;
        let params = self.parameters()?;
        Ok(Item { bare, params })
    }

    fn parameters(&mut self) -> Result<Parameters, Invalid> {
        let mut params: Parameters = Vec::new();
        while self.eat(b';') {
            self.skip_sp();
            let key = self.key()?;
            let value = if self.eat(b'=') {
                self.bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            match params.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => params.push((key, value)),
            }
        }
        Ok(params)
    }

    fn key(&mut self) -> Result<String, Invalid> {
        let start = self.i;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.i += 1,
            _ => return Err(self.invalid()),
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'.' | b'*')
            {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(self.text(start))
    }

    /// `s[start..i]`, which the callers only ever advance over ASCII.
    fn text(&self, start: usize) -> String {
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn bare_item(&mut self) -> Result<BareItem, Invalid> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string(),
            Some(b':') => self.byte_sequence(),
            Some(b'?') => self.boolean(),
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => Ok(self.token()),
            _ => Err(self.invalid()),
        }
    }

    fn number(&mut self) -> Result<BareItem, Invalid> {
        let negative = self.eat(b'-');
        let start = self.i;
        let mut int_digits = 0usize;
        let mut frac_digits: Option<usize> = None;
        while let Some(c) = self.peek() {
            match (c, frac_digits.as_mut()) {
                (b'0'..=b'9', None) => int_digits += 1,
                (b'0'..=b'9', Some(f)) => *f += 1,
                (b'.', None) if int_digits > 0 && int_digits <= 12 => frac_digits = Some(0),
                _ => break,
            }
            self.i += 1;
            if int_digits > 15 || frac_digits.is_some_and(|f| f > 3) {
                return Err(self.invalid());
            }
        }
        if int_digits == 0 {
            return Err(self.invalid());
        }
        let digits = |s: &[u8]| {
            s.iter()
                .filter(|c| c.is_ascii_digit())
                .fold(0i64, |n, c| n * 10 + i64::from(c - b'0'))
        };
        let text = &self.s[start..self.i];
        let sign = if negative { -1 } else { 1 };
        match frac_digits {
            None => Ok(BareItem::Integer(sign * digits(text))),
            Some(f) if (1..=3).contains(&f) => {
                // Thousandths: pad the fraction to three digits.
                let scaled = digits(text) * 10i64.pow(3 - f as u32);
                Ok(BareItem::Decimal(sign * scaled))
            }
            Some(_) => Err(self.invalid()),
        }
    }

    fn string(&mut self) -> Result<BareItem, Invalid> {
        self.i += 1; // '"'
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.invalid());
            };
            self.i += 1;
            match c {
                b'"' => return Ok(BareItem::String(out)),
                b'\\' => match self.peek() {
                    Some(e @ (b'"' | b'\\')) => {
                        self.i += 1;
                        out.push(e as char);
                    }
                    _ => return Err(self.invalid()),
                },
                0x20..=0x7e => out.push(c as char),
                _ => return Err(self.invalid()),
            }
        }
    }

    fn token(&mut self) -> BareItem {
        let start = self.i;
        self.i += 1;
        while let Some(c) = self.peek() {
            if is_tchar(c) || c == b':' || c == b'/' {
                self.i += 1;
            } else {
                break;
            }
        }
        BareItem::Token(self.text(start))
    }

    fn byte_sequence(&mut self) -> Result<BareItem, Invalid> {
        self.i += 1; // ':'
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == b':' {
                let b64 = &self.s[start..self.i];
                self.i += 1;
                return base64(b64)
                    .map(BareItem::ByteSequence)
                    .ok_or(Invalid(start));
            }
            if !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')) {
                return Err(self.invalid());
            }
            self.i += 1;
        }
        Err(self.invalid())
    }

    fn boolean(&mut self) -> Result<BareItem, Invalid> {
        self.i += 1; // '?'
        let b = match self.peek() {
            Some(b'1') => true,
            Some(b'0') => false,
            _ => return Err(self.invalid()),
        };
        self.i += 1;
        Ok(BareItem::Boolean(b))
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Standard base64 (padding optional, as RFC 8941 §4.2.7 allows parsers to accept).
fn base64(s: &[u8]) -> Option<Vec<u8>> {
    let body = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in body {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(bare: BareItem) -> Member {
        Member::Item(Item {
            bare,
            params: Vec::new(),
        })
    }

    #[test]
    fn dictionary_members_of_every_type() {
        let d = parse_dictionary(
            "a=1, b=-2.5, c=\"x \\\"y\\\"\", d=tok/en:1, e=:aGVsbG8=:, f=?0, g, h=(1 2);p",
        )
        .unwrap();
        assert_eq!(d[0], ("a".into(), item(BareItem::Integer(1))));
        assert_eq!(d[1], ("b".into(), item(BareItem::Decimal(-2500))));
        assert_eq!(d[2], ("c".into(), item(BareItem::String("x \"y\"".into()))));
        assert_eq!(d[3], ("d".into(), item(BareItem::Token("tok/en:1".into()))));
        assert_eq!(
            d[4],
            ("e".into(), item(BareItem::ByteSequence(b"hello".to_vec())))
        );
        assert_eq!(d[5], ("f".into(), item(BareItem::Boolean(false))));
        assert_eq!(d[6], ("g".into(), item(BareItem::Boolean(true))));
        let Member::InnerList(items, params) = &d[7].1 else {
            panic!("{:?}", d[7]);
        };
        assert_eq!(items.len(), 2);
        assert_eq!(params, &vec![("p".to_string(), BareItem::Boolean(true))]);
    }

    #[test]
    fn parameters_on_items_and_booleans() {
        let d = parse_dictionary("max-age=60;a=1;b, private;x=\"y\"").unwrap();
        let Member::Item(i) = &d[0].1 else { panic!() };
        assert_eq!(i.bare, BareItem::Integer(60));
        assert_eq!(
            i.params,
            vec![
                ("a".to_string(), BareItem::Integer(1)),
                ("b".to_string(), BareItem::Boolean(true))
            ]
        );
        let Member::Item(i) = &d[1].1 else { panic!() };
        assert_eq!(i.bare, BareItem::Boolean(true));
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_in_first_place() {
        let d = parse_dictionary("a=1, b=2, a=3").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], ("a".into(), item(BareItem::Integer(3))));
    }

    #[test]
    fn whitespace_rules() {
        assert!(parse_dictionary("  a=1 ,\tb=2  ").is_ok());
        assert_eq!(parse_dictionary("").unwrap(), Vec::new());
        assert_eq!(parse_dictionary("   ").unwrap(), Vec::new());
        // No whitespace around '='; inner-list members separated by SP only.
        for bad in ["a =1", "a= 1", "h=(1\t2)", "h=(1,2)"] {
            assert!(parse_dictionary(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invalid_fields_fail_as_a_whole() {
        for bad in [
            "max-age=10000, &&&&&",
            "MaX-aGe=3600",
            "a=1,",
            "a=1,,b=2",
            "a=1 b=2",
            "a=\"unterminated",
            "a=\"bad\\escape\"",
            "a=\"tab\there\"",
            "a=?2",
            "a=:not base64!:",
            "a=:open",
            "a=1234567890123456",
            "a=1234567890123.5",
            "a=1.2345",
            "a=1.",
            "a=-",
            "a=(1 2",
            "a=1;",
            "a=1;B=2",
            "1a=1",
            "a=@",
        ] {
            assert!(parse_dictionary(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn number_limits() {
        assert_eq!(
            parse_dictionary("a=999999999999999").unwrap()[0].1,
            item(BareItem::Integer(999_999_999_999_999))
        );
        assert_eq!(
            parse_dictionary("a=-999999999999.999").unwrap()[0].1,
            item(BareItem::Decimal(-999_999_999_999_999))
        );
        assert_eq!(
            parse_dictionary("a=0.5").unwrap()[0].1,
            item(BareItem::Decimal(500))
        );
    }
}
