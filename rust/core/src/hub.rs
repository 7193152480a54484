//! The fan-out hub: connections, their subscriptions and their outbound queues, and the routing of one shared
//! frame to every recipient.
//!
//! A connection is a client id, a set of topic patterns and a [`FrameQueue`]. The hub indexes connections by
//! client id (oldest first) and by pattern ([`TopicIndex`]), so a publish costs O(recipients), and pushes the same
//! `Arc<Frame>` into each recipient's queue: the message is framed once, whatever the fan-out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::cursor::check_id_prefix;
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::priority::LOW;
use crate::queue::{FrameQueue, PushOutcome};
use crate::topic::{matches, validate_topic, IdMap, TopicIndex};

/// Where a message goes: everyone (but one client), the subscribers of a topic, or one client's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Every connection, except those of the `exclude` client.
    Broadcast { exclude: Option<Box<str>> },
    /// The connections with a pattern matching this concrete topic.
    Topic(Box<str>),
    /// Every connection of this client id.
    Client(Box<str>),
}

impl Route {
    /// A route to the subscribers of `topic`, which must be a valid concrete topic.
    pub fn topic(topic: &str) -> Result<Route> {
        validate_topic(topic, false)?;
        Ok(Route::Topic(topic.into()))
    }

    /// The same route over borrowed strings.
    pub fn borrowed(&self) -> RouteRef<'_> {
        match self {
            Route::Broadcast { exclude } => RouteRef::Broadcast {
                exclude: exclude.as_deref(),
            },
            Route::Topic(topic) => RouteRef::Topic(topic),
            Route::Client(client) => RouteRef::Client(client),
        }
    }

    /// Whether a subscriber with this client id and these patterns receives what is sent on this route (the
    /// replay log asks this of every retained frame): [`RouteRef::admits`].
    pub fn admits<P: AsRef<str>>(&self, client_id: &str, patterns: &[P]) -> bool {
        self.borrowed().admits(client_id, patterns)
    }
}

/// A [`Route`] over borrowed strings: what a caller that holds a route's parts (a broker replaying its log) builds
/// to ask [`RouteRef::admits`] without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteRef<'a> {
    /// Every connection, except those of the `exclude` client.
    Broadcast { exclude: Option<&'a str> },
    /// The connections with a pattern matching this concrete topic.
    Topic(&'a str),
    /// Every connection of this client id.
    Client(&'a str),
}

impl<'a> RouteRef<'a> {
    /// The route named by the keywords of a publish: `target` (one client), or `topic`, or neither (a broadcast,
    /// maybe with `exclude`). Any other combination is refused. The topic is not validated here: [`Self::to_route`]
    /// does that for a route that is going to be published.
    pub fn from_parts(target: Option<&'a str>, topic: Option<&'a str>, exclude: Option<&'a str>) -> Result<Self> {
        match (target, topic, exclude) {
            (Some(_), Some(_), _) => Err(Error::Invalid("give target or topic, not both".into())),
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(Error::Invalid(
                "exclude only applies to a broadcast (no target, no topic)".into(),
            )),
            (Some(target), None, None) => Ok(RouteRef::Client(target)),
            (None, Some(topic), None) => Ok(RouteRef::Topic(topic)),
            (None, None, exclude) => Ok(RouteRef::Broadcast { exclude }),
        }
    }

    /// The routing rule: whether a subscriber with this client id and these patterns receives what is sent on this
    /// route. A client route admits exactly that client id; a topic route, a subscriber with a pattern that
    /// [`matches`] the topic; a broadcast, everyone but the excluded client id. Nothing is validated (an empty or
    /// invalid topic or pattern is compared as it is: an empty one matches nothing).
    pub fn admits<P: AsRef<str>>(self, client_id: &str, patterns: &[P]) -> bool {
        match self {
            RouteRef::Broadcast { exclude } => exclude != Some(client_id),
            RouteRef::Topic(topic) => patterns.iter().any(|p| matches(p.as_ref(), topic)),
            RouteRef::Client(client) => client == client_id,
        }
    }

    /// The owned route, to publish or to keep in the replay log; a topic must be a valid concrete topic.
    pub fn to_route(self) -> Result<Route> {
        Ok(match self {
            RouteRef::Broadcast { exclude } => Route::Broadcast {
                exclude: exclude.map(Into::into),
            },
            RouteRef::Topic(topic) => Route::topic(topic)?,
            RouteRef::Client(client) => Route::Client(client.into()),
        })
    }
}

/// What one publish or push did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Connections whose queue accepted the frame.
    pub delivered: usize,
    /// Connections whose queue went from empty to non-empty: the writers to wake.
    pub woken: Vec<u64>,
    /// Connections that could not take a resumable frame: close them as slow consumers.
    pub overflowed: Vec<u64>,
    /// Connections where an ephemeral frame was dropped, or evicted others to fit.
    pub dropped: usize,
}

/// The hub's running totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HubCounters {
    /// Live connections.
    pub connections: usize,
    /// Client ids with at least one live connection.
    pub clients: usize,
    /// Calls to [`Hub::publish`].
    pub published: u64,
    /// Frames accepted by a queue through [`Hub::publish`] and [`Hub::push`] (not [`Hub::push_all`] keepalives).
    pub delivered: u64,
    /// Ephemeral frames evicted from a queue to make room.
    pub evicted: u64,
    /// Ephemeral frames that did not fit in a queue.
    pub dropped: u64,
    /// Resumable frames that did not fit in a queue (each one closes its connection).
    pub overflowed: u64,
    /// Frames waiting in all queues.
    pub queued_frames: usize,
    /// Bytes waiting in all queues.
    pub queued_bytes: usize,
}

/// One connection. Kept small: tens of thousands of them are mostly idle.
struct Conn {
    client: Arc<str>,
    patterns: Box<[Box<str>]>,
    queue: FrameQueue,
    /// The last publish that reached this connection, so that a frame matching several patterns is queued once.
    stamp: u64,
}

/// A client's connection ids, oldest first: inline up to two (no allocation for the usual one or two streams).
type ClientConns = SmallVec<[u64; 2]>;

/// The fan-out registry (see the module docs).
pub struct Hub {
    conns: IdMap<Conn>,
    clients: HashMap<Arc<str>, ClientConns>,
    topics: TopicIndex,
    queue_frames: usize,
    queue_bytes: usize,
    id_prefix: Box<[u8]>,
    next_id: u64,
    stamp: u64,
    totals: HubCounters,
}

impl Hub {
    /// A hub whose connections each queue at most `queue_frames` frames and `queue_bytes` bytes, and whose queues
    /// write `id: <id_prefix><seq>` lines (`id_prefix` is the replay log's `<epoch>-`).
    pub fn new(queue_frames: usize, queue_bytes: usize, id_prefix: &str) -> Result<Hub> {
        if queue_frames == 0 || queue_bytes == 0 {
            return Err(Error::Invalid("queue_frames and queue_bytes must be positive".into()));
        }
        check_id_prefix(id_prefix)?;
        Ok(Hub {
            conns: IdMap::default(),
            clients: HashMap::new(),
            topics: TopicIndex::new(),
            queue_frames,
            queue_bytes,
            id_prefix: id_prefix.as_bytes().into(),
            next_id: 1,
            stamp: 0,
            totals: HubCounters::default(),
        })
    }

    /// The size of the hub's own per-connection record, in bytes (excluding its patterns and the index entries).
    pub const fn connection_size() -> usize {
        std::mem::size_of::<Conn>()
    }

    /// Register a connection of `client` subscribed to `patterns` (validated; repeats count once); returns its id.
    pub fn add<P: AsRef<str>>(&mut self, client: &str, patterns: &[P]) -> Result<u64> {
        for pattern in patterns {
            validate_topic(pattern.as_ref(), true)?;
        }
        let patterns = unique(patterns);
        let id = self.next_id;
        self.next_id += 1;
        let client = match self.clients.get_key_value(client) {
            Some((shared, _)) => Arc::clone(shared),
            None => Arc::from(client),
        };
        self.clients.entry(Arc::clone(&client)).or_default().push(id);
        for pattern in &patterns {
            self.topics.insert(pattern, id);
        }
        let queue = FrameQueue::new(self.queue_frames, self.queue_bytes);
        self.conns.insert(
            id,
            Conn {
                client,
                patterns,
                queue,
                stamp: 0,
            },
        );
        Ok(id)
    }

    /// Forget a connection and everything it held (queue, index entries, its client's entry if it was the last).
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(conn) = self.conns.remove(&id) else {
            return false;
        };
        for pattern in &conn.patterns {
            self.topics.remove(pattern, id);
        }
        if let Some(ids) = self.clients.get_mut(&*conn.client) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.clients.remove(&*conn.client);
            }
        }
        self.totals.queued_frames -= conn.queue.len();
        self.totals.queued_bytes -= conn.queue.bytes();
        shrink(&mut self.conns);
        shrink(&mut self.clients);
        true
    }

    /// Replace a connection's patterns (validated first; repeats count once): the topic index drops the patterns it
    /// no longer has (pruning what no other connection shares) and gains the new ones; its queue and client are
    /// untouched. Returns false for an unknown connection; an invalid pattern changes nothing.
    pub fn set_topics<P: AsRef<str>>(&mut self, id: u64, patterns: &[P]) -> Result<bool> {
        for pattern in patterns {
            validate_topic(pattern.as_ref(), true)?;
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(false);
        };
        let patterns = unique(patterns);
        let old = std::mem::replace(&mut conn.patterns, patterns);
        let kept: HashSet<&str> = conn.patterns.iter().map(|p| &**p).collect();
        for pattern in old.iter().filter(|p| !kept.contains(&***p)) {
            self.topics.remove(pattern, id);
        }
        let before: HashSet<&str> = old.iter().map(|p| &**p).collect();
        for pattern in conn.patterns.iter().filter(|p| !before.contains(&***p)) {
            self.topics.insert(pattern, id);
        }
        Ok(true)
    }

    /// Route `frame` and push it (the same `Arc`) into every recipient's queue, once per connection.
    pub fn publish(&mut self, frame: &Arc<Frame>, route: &Route) -> Delivery {
        let mut out = Delivery::default();
        let totals = &mut self.totals;
        match route {
            Route::Broadcast { exclude } => {
                let skip = exclude
                    .as_deref()
                    .and_then(|c| self.clients.get_key_value(c))
                    .map(|(k, _)| k);
                for (&id, conn) in &mut self.conns {
                    if !skip.is_some_and(|skip| Arc::ptr_eq(skip, &conn.client)) {
                        deliver(id, conn, frame, &mut out, totals);
                    }
                }
            }
            Route::Topic(topic) => {
                self.stamp += 1;
                let (conns, stamp) = (&mut self.conns, self.stamp);
                self.topics.matching(topic, |id| {
                    if let Some(conn) = conns.get_mut(&id).filter(|conn| conn.stamp != stamp) {
                        conn.stamp = stamp;
                        deliver(id, conn, frame, &mut out, totals);
                    }
                });
            }
            Route::Client(client) => {
                for &id in self.clients.get(&**client).map_or(&[][..], ClientConns::as_slice) {
                    if let Some(conn) = self.conns.get_mut(&id) {
                        deliver(id, conn, frame, &mut out, totals);
                    }
                }
            }
        }
        totals.published += 1;
        totals.delivered += out.delivered as u64;
        out
    }

    /// Push a frame to one connection (a system frame, a redelivery). An unknown id delivers nothing.
    pub fn push(&mut self, id: u64, frame: &Arc<Frame>) -> Delivery {
        let mut out = Delivery::default();
        if let Some(conn) = self.conns.get_mut(&id) {
            deliver(id, conn, frame, &mut out, &mut self.totals);
        }
        self.totals.delivered += out.delivered as u64;
        out
    }

    /// Queue raw bytes (a keepalive comment) as one ephemeral LOW frame on every connection; returns the woken.
    pub fn push_all(&mut self, bytes: &[u8]) -> Vec<u64> {
        let Ok(frame) = Frame::raw(bytes, LOW) else {
            return Vec::new();
        };
        let frame = Arc::new(frame);
        let mut out = Delivery::default();
        for (&id, conn) in &mut self.conns {
            deliver(id, conn, &frame, &mut out, &mut self.totals);
        }
        out.woken
    }

    /// Pop what is pending for `id` (at most about `max_bytes`) onto `out`; returns how many frames were written.
    pub fn drain(&mut self, id: u64, max_bytes: usize, out: &mut Vec<u8>) -> usize {
        let Some(conn) = self.conns.get_mut(&id) else {
            return 0;
        };
        let (frames, bytes) = (conn.queue.len(), conn.queue.bytes());
        let written = conn.queue.drain(max_bytes, &self.id_prefix, out);
        self.totals.queued_frames -= frames - conn.queue.len();
        self.totals.queued_bytes -= bytes - conn.queue.bytes();
        written
    }

    /// The connection's low-water mark (0 for an unknown connection).
    pub fn watermark(&self, id: u64) -> u64 {
        self.conns.get(&id).map_or(0, |conn| conn.queue.watermark())
    }

    /// Start the connection from this low-water mark (after a replay); returns false for an unknown connection.
    pub fn set_watermark(&mut self, id: u64, seq: u64) -> bool {
        self.conns
            .get_mut(&id)
            .map(|conn| conn.queue.set_watermark(seq))
            .is_some()
    }

    /// The client's connection ids, oldest first.
    pub fn connections_of(&self, client: &str) -> &[u64] {
        self.clients.get(client).map_or(&[], ClientConns::as_slice)
    }

    /// The client id of a connection.
    pub fn client_of(&self, id: u64) -> Option<&str> {
        self.conns.get(&id).map(|conn| &*conn.client)
    }

    /// The patterns of a connection, repeats removed, in the order given.
    pub fn topics_of(&self, id: u64) -> Option<&[Box<str>]> {
        self.conns.get(&id).map(|conn| &*conn.patterns)
    }

    /// `(queued_frames, queued_bytes, dropped_frames)` of one connection, dropped counting ephemeral frames
    /// evicted from its queue or refused by it.
    pub fn queue_stats(&self, id: u64) -> Option<(usize, usize, u64)> {
        let conn = self.conns.get(&id)?;
        let counters = conn.queue.counters();
        let dropped = counters.evicted + counters.overflowed;
        Some((conn.queue.len(), conn.queue.bytes(), dropped))
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Whether `id` is a live connection.
    pub fn contains(&self, id: u64) -> bool {
        self.conns.contains_key(&id)
    }

    /// The running totals.
    pub fn counters(&self) -> HubCounters {
        HubCounters {
            connections: self.conns.len(),
            clients: self.clients.len(),
            ..self.totals
        }
    }

    /// Whether the topic index is back to an empty root (for tests of removal).
    pub fn topics_pruned(&self) -> bool {
        self.topics.is_empty() && self.topics.is_pruned()
    }
}

/// Push one frame into one connection's queue and account for what happened.
fn deliver(id: u64, conn: &mut Conn, frame: &Arc<Frame>, out: &mut Delivery, totals: &mut HubCounters) {
    let (frames, bytes) = (conn.queue.len(), conn.queue.bytes());
    match conn.queue.push(Arc::clone(frame)) {
        PushOutcome::Accepted { evicted, .. } => {
            out.delivered += 1;
            if frames == 0 {
                out.woken.push(id);
            }
            if !evicted.is_empty() {
                out.dropped += 1;
                totals.evicted += evicted.len() as u64;
            }
        }
        PushOutcome::Overflow(_) => {
            out.overflowed.push(id);
            totals.overflowed += 1;
        }
        PushOutcome::Dropped(_) => {
            out.dropped += 1;
            totals.dropped += 1;
        }
        PushOutcome::Duplicate(_) => {} // the replay that opened this stream wrote it already
    }
    totals.queued_frames = totals.queued_frames + conn.queue.len() - frames;
    totals.queued_bytes = totals.queued_bytes + conn.queue.bytes() - bytes;
}

/// The patterns without repeats, in the order given.
fn unique<P: AsRef<str>>(patterns: &[P]) -> Box<[Box<str>]> {
    let mut seen = HashSet::with_capacity(patterns.len());
    patterns
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| seen.insert(*p))
        .map(Box::from)
        .collect()
}

/// Give memory back after a wave of disconnects (a map never shrinks by itself).
fn shrink<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: Option<u64>) -> Arc<Frame> {
        Arc::new(Frame::new(b"{}", "json", 1, seq).unwrap())
    }

    fn sorted(mut ids: Vec<u64>) -> Vec<u64> {
        ids.sort_unstable();
        ids
    }

    #[test]
    fn routes_once_per_connection() {
        let mut hub = Hub::new(16, 1 << 20, "e-").unwrap();
        let a = hub.add("alice", &["news.*", "news.>", "news.*", "news.eu"]).unwrap();
        let b = hub.add("bob", &["sport.>"]).unwrap();
        let c = hub.add("alice", &[] as &[&str]).unwrap();
        assert_eq!(hub.topics_of(a).unwrap().len(), 3);
        assert_eq!(hub.connections_of("alice"), &[a, c]);

        let d = hub.publish(&frame(Some(1)), &Route::topic("news.eu").unwrap());
        assert_eq!((d.delivered, d.woken.clone()), (1, vec![a]));
        let d = hub.publish(
            &frame(Some(2)),
            &Route::Broadcast {
                exclude: Some("alice".into()),
            },
        );
        assert_eq!((d.delivered, d.woken), (1, vec![b]));
        let d = hub.publish(&frame(Some(3)), &Route::Client("alice".into()));
        assert_eq!((d.delivered, sorted(d.woken)), (2, vec![c]));
        let d = hub.publish(&frame(Some(4)), &Route::Broadcast { exclude: None });
        assert_eq!((d.delivered, d.woken.len()), (3, 0));

        let counters = hub.counters();
        assert_eq!((counters.connections, counters.clients, counters.published), (3, 2, 4));
        assert_eq!((counters.delivered, counters.queued_frames), (7, 7));

        let mut out = Vec::new();
        assert_eq!(hub.drain(a, usize::MAX, &mut out), 3);
        assert!(
            out.starts_with(b"id: e-1\nevent: json\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(hub.counters().queued_frames, 4);
    }

    #[test]
    fn removal_frees_everything() {
        let mut hub = Hub::new(4, 1 << 20, "").unwrap();
        let ids: Vec<u64> = (0..100)
            .map(|i| {
                hub.add(&format!("c{}", i % 7), &[format!("t.{}", i % 5), "t.>".into()])
                    .unwrap()
            })
            .collect();
        hub.publish(&frame(Some(1)), &Route::topic("t.3").unwrap());
        hub.push_all(b": keepalive\n\n");
        for id in ids {
            assert!(hub.remove(id));
            assert!(!hub.remove(id));
        }
        let counters = hub.counters();
        assert_eq!((counters.connections, counters.clients), (0, 0));
        assert_eq!((counters.queued_frames, counters.queued_bytes), (0, 0));
        assert!(hub.topics_pruned());
    }

    #[test]
    fn set_topics_reroutes_and_prunes() {
        let mut hub = Hub::new(16, 1 << 20, "e-").unwrap();
        let a = hub.add("alice", &["news.*", "sport"]).unwrap();
        let b = hub.add("bob", &["news.*"]).unwrap();
        assert_eq!(hub.set_topics(a, &["sport", "weather.>", "weather.>"]), Ok(true));
        assert_eq!(
            hub.topics_of(a).unwrap(),
            &["sport".into(), "weather.>".into()] as &[Box<str>]
        );
        let d = hub.publish(&frame(Some(1)), &Route::topic("news.eu").unwrap());
        assert_eq!(d.woken, vec![b], "alice no longer has news.*");
        let d = hub.publish(&frame(Some(2)), &Route::topic("weather.eu.fr").unwrap());
        assert_eq!(d.woken, vec![a]);
        assert_eq!(hub.queue_stats(a).map(|s| s.0), Some(1), "the queue is kept");
        // An invalid pattern changes nothing; an unknown connection is false.
        assert!(matches!(hub.set_topics(a, &["ok", "a..b"]), Err(Error::Topic(_))));
        assert_eq!(hub.topics_of(a).unwrap().len(), 2);
        assert_eq!(hub.set_topics(99, &["x"]), Ok(false));
        assert_eq!(hub.set_topics(a, &[] as &[&str]), Ok(true));
        let d = hub.publish(&frame(Some(3)), &Route::topic("sport").unwrap());
        assert_eq!(d.delivered, 0);
        hub.remove(a);
        hub.remove(b);
        assert!(
            hub.topics_pruned(),
            "patterns dropped by set_topics left index nodes behind"
        );
    }

    #[test]
    fn reports_overflow_and_drops() {
        let mut hub = Hub::new(1, 1 << 20, "").unwrap();
        let a = hub.add("a", &[] as &[&str]).unwrap();
        assert_eq!(hub.publish(&frame(Some(1)), &Route::Client("a".into())).woken, vec![a]);
        let d = hub.publish(&frame(Some(2)), &Route::Client("a".into()));
        assert_eq!((d.delivered, d.overflowed), (0, vec![a]));
        let d = hub.publish(&frame(None), &Route::Client("a".into()));
        assert_eq!((d.delivered, d.dropped), (0, 1));
        assert_eq!(hub.queue_stats(a).map(|s| s.0), Some(1));
        assert_eq!(hub.counters().overflowed, 1);
    }

    #[test]
    fn refuses_bad_arguments() {
        assert!(matches!(Hub::new(0, 1, ""), Err(Error::Invalid(_))));
        assert!(matches!(Hub::new(1, 1, "a\nid: x"), Err(Error::Invalid(_))));
        let mut hub = Hub::new(1, 1, "").unwrap();
        assert!(matches!(hub.add("a", &["ok", "a..b"]), Err(Error::Topic(_))));
        assert_eq!(hub.counters().connections, 0);
        assert!(hub.topics_pruned());
        assert!(matches!(Route::topic("a.*"), Err(Error::Topic(_))));
    }

    #[test]
    fn route_admits() {
        let patterns = ["news.>"];
        assert!(Route::Broadcast { exclude: None }.admits("a", &patterns));
        assert!(!Route::Broadcast {
            exclude: Some("a".into())
        }
        .admits("a", &patterns));
        assert!(Route::Topic("news.eu".into()).admits("b", &patterns));
        assert!(!Route::Topic("sport".into()).admits("b", &patterns));
        assert!(Route::Client("b".into()).admits("b", &[] as &[&str]));
    }

    #[test]
    fn route_ref_admits_like_the_owned_route() {
        let none: &[&str] = &[];
        let cases: [(RouteRef, &str, &[&str], bool); 14] = [
            (RouteRef::Client("a"), "a", none, true),
            (RouteRef::Client("a"), "b", &["a", ">"], false),
            (RouteRef::Client(""), "", none, true),
            (RouteRef::Topic("a.b"), "x", &["c", "a.*"], true),
            (RouteRef::Topic("a.b"), "x", &["a.b.>", "b.*", "a"], false),
            (RouteRef::Topic("a.b"), "x", none, false),
            // Nothing is validated: an empty topic or pattern matches nothing.
            (RouteRef::Topic(""), "x", &["", ">", "*"], false),
            (RouteRef::Topic("a"), "x", &[""], false),
            (RouteRef::Broadcast { exclude: None }, "a", none, true),
            (RouteRef::Broadcast { exclude: None }, "", none, true),
            (RouteRef::Broadcast { exclude: Some("a") }, "a", &[">"], false),
            (RouteRef::Broadcast { exclude: Some("a") }, "b", none, true),
            (RouteRef::Broadcast { exclude: Some("") }, "", none, false),
            (RouteRef::Broadcast { exclude: Some("") }, "a", none, true),
        ];
        for (route, client, patterns, want) in cases {
            assert_eq!(
                route.admits(client, patterns),
                want,
                "{route:?} {client:?} {patterns:?}"
            );
            if let Ok(owned) = route.to_route() {
                assert_eq!(owned.borrowed(), route);
                assert_eq!(owned.admits(client, patterns), want, "{owned:?}");
            }
        }
    }

    #[test]
    fn route_from_parts_names_one_route() {
        let parts = RouteRef::from_parts;
        assert_eq!(parts(Some("a"), None, None), Ok(RouteRef::Client("a")));
        assert_eq!(parts(None, Some("t"), None), Ok(RouteRef::Topic("t")));
        assert_eq!(parts(None, None, None), Ok(RouteRef::Broadcast { exclude: None }));
        assert_eq!(
            parts(None, None, Some("x")),
            Ok(RouteRef::Broadcast { exclude: Some("x") })
        );
        for (target, topic, exclude) in [
            (Some("a"), Some("t"), None),
            (Some("a"), Some("t"), Some("x")),
            (Some("a"), None, Some("x")),
            (None, Some("t"), Some("x")),
        ] {
            assert!(matches!(parts(target, topic, exclude), Err(Error::Invalid(_))));
        }
        // A route from parts is not validated until it becomes an owned route.
        assert_eq!(parts(None, Some("a.*"), None), Ok(RouteRef::Topic("a.*")));
        assert!(matches!(RouteRef::Topic("a.*").to_route(), Err(Error::Topic(_))));
        assert!(matches!(RouteRef::Topic("").to_route(), Err(Error::Topic(_))));
        assert_eq!(RouteRef::Client("").to_route(), Ok(Route::Client("".into())));
    }

    #[test]
    fn connection_record_is_small() {
        let size = Hub::connection_size();
        println!("per-connection record: {size} bytes");
        assert!(size <= 512, "{size}");
    }
}
