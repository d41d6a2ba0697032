//! Namespaces: clients, channels, subscriptions, queues and backlogs of different namespaces
//! never meet.
//!
//! Inside the broker a name of a namespace other than the default is kept as the namespace,
//! the separator U+001F (a control character, so never part of a valid name) and the name:
//! `billing` in namespace `a` is `a\u{1f}billing`. Every map and every store key then keeps
//! namespaces apart by itself, and names of the default namespace are unchanged, so a store
//! written before namespaces opens as the default namespace. What a client is shown (senders,
//! channels, recipients, details) is the name alone: a client only ever meets names of its own
//! namespace.

use broadcast_protocol::{Publish, Target};
use std::borrow::Cow;

/// Between a namespace and a name.
pub(crate) const SEPARATOR: char = '\u{1f}';

/// The broker's name for `name` in namespace `ns` (`None`: the default namespace).
pub(crate) fn scoped(ns: Option<&str>, name: &str) -> String {
    match ns {
        None => name.to_owned(),
        Some(ns) => format!("{ns}{SEPARATOR}{name}"),
    }
}

/// The namespace part of a broker name, empty for the default namespace.
pub(crate) fn namespace_of(name: &str) -> &str {
    name.find(SEPARATOR).map_or("", |i| &name[..i])
}

/// The name a client is shown: the broker name without its namespace.
pub(crate) fn shown(name: &str) -> &str {
    name.find(SEPARATOR)
        .map_or(name, |i| &name[i + SEPARATOR.len_utf8()..])
}

/// A text with every broker name in it shown without its namespace (names hold no white
/// space, so a namespace runs from the last white space before a separator to it).
pub(crate) fn shown_text(text: &str) -> Cow<'_, str> {
    if !text.contains(SEPARATOR) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(shown(word));
    }
    Cow::Owned(out)
}

/// The message with every name of its target in namespace `ns`.
pub(crate) fn scope_target(ns: &str, target: &Target) -> Target {
    map_target(target, |name| scoped(Some(ns), name))
}

/// A target with every name shown without its namespace.
pub(crate) fn shown_target(target: &Target) -> Target {
    map_target(target, |name| shown(name).to_owned())
}

/// `target` with each of its names replaced by `one` of it.
fn map_target(target: &Target, one: impl Fn(&str) -> String) -> Target {
    let one = |name: &String| one(name);
    match target {
        Target::Client(c) => Target::Client(one(c)),
        Target::Group(names) => Target::Group(names.iter().map(one).collect()),
        Target::Channel(c) => Target::Channel(one(c)),
        Target::Channels(names) => Target::Channels(names.iter().map(one).collect()),
        Target::ClientInChannel { client, channel } => Target::ClientInChannel {
            client: one(client),
            channel: one(channel),
        },
        Target::All => Target::All,
    }
}

/// The message with its target in namespace `ns` (`None`: unchanged).
pub(crate) fn scope<'a>(ns: Option<&str>, msg: &'a Publish) -> Cow<'a, Publish> {
    match ns {
        None => Cow::Borrowed(msg),
        Some(ns) => Cow::Owned(Publish {
            target: scope_target(ns, &msg.target),
            ..msg.clone()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_a_namespace_are_shown_without_it() {
        let n = scoped(Some("a"), "billing");
        assert_eq!(n, "a\u{1f}billing");
        assert_eq!(scoped(None, "billing"), "billing");
        assert_eq!((namespace_of(&n), shown(&n)), ("a", "billing"));
        assert_eq!((namespace_of("billing"), shown("billing")), ("", "billing"));
        let detail = format!(
            "{n} is not connected; channel {} has none",
            scoped(Some("a"), "x.y")
        );
        assert_eq!(
            shown_text(&detail),
            "billing is not connected; channel x.y has none"
        );
        assert!(matches!(shown_text("plain text"), Cow::Borrowed(_)));
    }

    #[test]
    fn every_name_of_a_target_moves_to_the_namespace() {
        let t = Target::ClientInChannel {
            client: "c".into(),
            channel: "ch".into(),
        };
        assert_eq!(
            scope_target("n", &t),
            Target::ClientInChannel {
                client: "n\u{1f}c".into(),
                channel: "n\u{1f}ch".into()
            }
        );
        assert_eq!(
            scope_target("n", &Target::Group(vec!["a".into(), "b".into()])),
            Target::Group(vec!["n\u{1f}a".into(), "n\u{1f}b".into()])
        );
        assert_eq!(scope_target("n", &Target::All), Target::All);
    }
}
