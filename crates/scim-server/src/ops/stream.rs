//! Reads answered page by page: the answer is written out as it is read, so that a group's
//! members are never all in memory (see docs/ARCHITECTURE.md, "No read holds a whole group in
//! memory"). The HTTP layer takes the [`Piece`]s as they come.

use scim_core::messages::ListResponse;
use scim_core::query::{paging, plan_filter};
use scim_core::render::{MemberPages, Rendered};
use scim_core::store::{Include, ListQuery, PagedRead, ReadPart, Visit};
use scim_core::{ScimError, StoreError};

use super::{ctx, list_frame, projection, ListPlan};
use crate::http::Params;
use crate::AppState;

/// What a read answered page by page ([`stream_get`], [`stream_list`]) hands the HTTP layer,
/// in order: one `Head`, then `Bytes`, then `Last`. A piece it cannot hand over (the client
/// went away, or stopped reading for longer than the read may last) ends the read.
#[derive(Debug)]
pub enum Piece {
    /// the answer begins: the resource's version, for a single resource
    Head(Option<i64>),
    /// the next bytes of the SCIM JSON body
    Bytes(Vec<u8>),
    /// the last bytes of the body: it is complete
    Last(Vec<u8>),
    /// instead of `Head`: the resource is no longer at the version the read was to show (see
    /// [`stream_get`]); nothing follows
    Changed,
}

/// Members read per statement in an answer written page by page.
const MEMBER_PAGE: usize = 1000;
/// Bytes of body gathered before they are handed over.
const CHUNK: usize = 64 * 1024;

/// Whether a read with these parameters shows a group's members, and is therefore answered
/// page by page ([`stream_get`], [`stream_list`]).
pub fn reads_members(st: &AppState, rt: &str, params: &Params) -> bool {
    ctx(st, rt).is_ok_and(|ctx| projection(&ctx, params).include(&ctx).members)
}

impl ListPlan {
    /// Whether the planned list shows its groups' members, and is therefore answered page by
    /// page ([`stream_list`]).
    pub fn reads_members(&self) -> bool {
        self.query.include.members
    }
}

/// Writes the body of a read answered page by page, handing it over in chunks.
struct Writer<'s> {
    out: Vec<u8>,
    send: &'s mut dyn FnMut(Piece) -> bool,
    /// a piece could not be handed over: stop reading
    gone: bool,
    /// the head, handed over with the first chunk (one wake-up of the response, not two)
    head: Option<Piece>,
}

impl<'s> Writer<'s> {
    fn new(out: Vec<u8>, send: &'s mut dyn FnMut(Piece) -> bool) -> Self {
        Writer {
            out,
            send,
            gone: false,
            head: None,
        }
    }

    /// The answer begins with `head`.
    fn begin(&mut self, head: Piece) -> Visit {
        self.head = Some(head);
        Visit::Continue
    }

    fn send(&mut self, piece: Piece) -> Visit {
        if let Some(head) = self.head.take() {
            if !self.gone && !(self.send)(head) {
                self.gone = true;
            }
        }
        if !self.gone && !(self.send)(piece) {
            self.gone = true;
        }
        match self.gone {
            true => Visit::Stop,
            false => Visit::Continue,
        }
    }

    /// Hands the gathered bytes over once there are enough of them.
    fn flush_full(&mut self) -> Visit {
        match self.out.len() >= CHUNK {
            true => {
                let bytes = std::mem::take(&mut self.out);
                self.send(Piece::Bytes(bytes))
            }
            false => Visit::Continue,
        }
    }

    /// Hands the rest over as the end of the body.
    fn end(mut self) {
        let bytes = std::mem::take(&mut self.out);
        self.send(Piece::Last(bytes));
    }
}

/// GET one group with its members, read from one snapshot and written out page by page
/// through `send`, so that no more than a page of members is held however large the group.
/// With `expected` (the answer to a write at that version), a resource changed or deleted
/// since is answered [`Piece::Changed`].
pub fn stream_get(
    st: &AppState,
    tenant: &str,
    rt: &str,
    id: &str,
    params: &Params,
    expected: Option<i64>,
    send: &mut dyn FnMut(Piece) -> bool,
) -> Result<(), ScimError> {
    let ctx = ctx(st, rt)?;
    let proj = projection(&ctx, params);
    let base = st.config.public_url.as_str();
    let mut pages = MemberPages::new(&ctx, base, &proj)
        .ok_or_else(|| ScimError::internal("a page-by-page read of a resource without members"))?;
    let mut w = Writer::new(Vec::new(), send);
    let mut visit = |part: ReadPart<'_>| match part {
        ReadPart::Page(page) => {
            let Some(rec) = page.resources.first() else {
                return Visit::Stop;
            };
            if expected.is_some_and(|v| v != rec.version) {
                w.send(Piece::Changed);
                w.gone = true;
                return Visit::Stop;
            }
            pages.start(&mut w.out, &Rendered::new(&ctx, rec, base, &proj));
            w.begin(Piece::Head(Some(rec.version)))
        }
        ReadPart::Resource(..) => Visit::Continue,
        ReadPart::Members(members) => {
            pages.push(&mut w.out, members);
            w.flush_full()
        }
    };
    let include = proj.include(&ctx);
    let read = st.store.read_paged(
        tenant,
        &ctx.rt.id,
        PagedRead::One(id),
        include,
        MEMBER_PAGE,
        &mut visit,
    );
    match read {
        Err(StoreError::NotFound) if expected.is_some() => {
            w.send(Piece::Changed);
            return Ok(());
        }
        read => read?,
    }
    if !w.gone {
        pages.finish(&mut w.out);
        w.end();
    }
    Ok(())
}

/// A planned list whose groups show their members ([`ListPlan::reads_members`]), read from
/// one snapshot and written out page by page through `send` (see [`stream_get`]).
pub fn stream_list(
    st: &AppState,
    tenant: &str,
    plan: &ListPlan,
    send: &mut dyn FnMut(Piece) -> bool,
) -> Result<(), ScimError> {
    let ctx = ctx(st, &plan.rt)?;
    let base = st.config.public_url.as_str();
    let mut pages = MemberPages::new(&ctx, base, &plan.proj)
        .ok_or_else(|| ScimError::internal("a page-by-page list without members"))?;
    let mut w = Writer::new(Vec::new(), send);
    let mut shown = 0..0;
    let mut tail = Vec::new();
    // Whether a resource is written and open for its members.
    let mut open = false;
    let mut visit = |part: ReadPart<'_>| match part {
        ReadPart::Page(page) => {
            let (frame, range) = list_frame(plan, page);
            let (head, end) = frame.envelope();
            (shown, tail) = (range, end);
            w.out.extend_from_slice(&head);
            w.begin(Piece::Head(None))
        }
        ReadPart::Resource(of, _) if !shown.contains(&of) => Visit::Skip,
        ReadPart::Resource(of, rec) => {
            if std::mem::replace(&mut open, true) {
                pages.finish(&mut w.out);
            }
            if of > shown.start {
                w.out.push(b',');
            }
            pages.start(&mut w.out, &Rendered::new(&ctx, rec, base, &plan.proj));
            w.flush_full()
        }
        ReadPart::Members(members) => {
            pages.push(&mut w.out, members);
            w.flush_full()
        }
    };
    let query = &plan.query;
    st.store.read_paged(
        tenant,
        &ctx.rt.id,
        PagedRead::List(query),
        query.include,
        MEMBER_PAGE,
        &mut visit,
    )?;
    if !w.gone {
        if open {
            pages.finish(&mut w.out);
        }
        w.out.extend_from_slice(&tail);
        w.end();
    }
    Ok(())
}

/// `POST /.search` at the root: every resource type, in registry order (RFC 7644 section
/// 3.4.3). A type whose schema lacks an attribute the filter names contributes nothing; a
/// filter no type understands is the error it gives for the first type. `startIndex` and
/// `count` page over the concatenation. `sortBy` and cursors apply to one type at a time.
/// The answer is written out through `send` (see [`stream_get`]); a group that shows its
/// members is read again with them, page by page, so no whole member list is held.
pub fn search_all(
    st: &AppState,
    tenant: &str,
    params: &Params,
    send: &mut dyn FnMut(Piece) -> bool,
) -> Result<(), ScimError> {
    if params.get("sortBy").is_some() || params.get("cursor").is_some() {
        return Err(ScimError::invalid_value(
            "sortBy and cursor are not supported across resource types; search /Users or /Groups",
        ));
    }
    let (start_index, count) = paging(
        params.int("startIndex")?,
        params.int("count")?,
        &st.config.query,
    );
    let mut planned = Vec::new();
    let mut first_error = None;
    for rt in st.registry.resource_types() {
        let ctx = ctx(st, &rt.id)?;
        match plan_filter(&ctx, params.get("filter"), &st.config.query) {
            Ok(filter) => planned.push((ctx, filter)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if planned.is_empty() {
        return Err(first_error
            .unwrap_or_else(|| ScimError::invalid_filter("No resource type accepts this filter")));
    }
    let mut total = 0u64;
    let mut skip = start_index - 1;
    let mut left = count;
    let mut pages = Vec::new();
    for (ctx, filter) in planned {
        // One list per type: it counts the type's matches and returns the slice that falls
        // in the window (nothing when the window starts after this type).
        let proj = projection(&ctx, params);
        let page = st.store.list(
            tenant,
            &ctx.rt.id,
            &ListQuery {
                filter,
                start_index: skip + 1,
                count: left,
                // Members are read group by group below, page by page.
                include: Include {
                    members: false,
                    ..proj.include(&ctx)
                },
                sort: None,
                after: None,
            },
        )?;
        total += page.total;
        skip = skip.saturating_sub(page.total);
        left -= page.resources.len() as u64;
        pages.push((ctx, proj, page.resources));
    }
    let n = pages.iter().map(|(_, _, records)| records.len()).sum();
    let (head, tail) = ListResponse::new(total, Some(start_index), vec![(); n]).envelope();
    let base = st.config.public_url.as_str();
    let mut w = Writer::new(head, send);
    w.begin(Piece::Head(None));
    let mut first = true;
    for (ctx, proj, records) in &pages {
        for rec in records {
            if !std::mem::take(&mut first) {
                w.out.push(b',');
            }
            let Some(mut members) = MemberPages::new(ctx, base, proj) else {
                let _ = serde_json::to_writer(&mut w.out, &Rendered::new(ctx, rec, base, proj));
                if w.flush_full() == Visit::Stop {
                    return Ok(());
                }
                continue;
            };
            // The group as one read shows it, with its members (see `stream_get`); one
            // deleted since the list is shown as the list found it.
            let mut started = false;
            let read = st.store.read_paged(
                tenant,
                &ctx.rt.id,
                PagedRead::One(&rec.id),
                proj.include(ctx),
                MEMBER_PAGE,
                &mut |part| match part {
                    ReadPart::Page(page) => match page.resources.first() {
                        Some(now) => {
                            started = true;
                            members.start(&mut w.out, &Rendered::new(ctx, now, base, proj));
                            w.flush_full()
                        }
                        None => Visit::Stop,
                    },
                    ReadPart::Resource(..) => Visit::Continue,
                    ReadPart::Members(m) => {
                        members.push(&mut w.out, m);
                        w.flush_full()
                    }
                },
            );
            match read {
                Err(StoreError::NotFound) => {}
                read => read?,
            }
            if w.gone {
                return Ok(());
            }
            if !started {
                members.start(&mut w.out, &Rendered::new(ctx, rec, base, proj));
            }
            members.finish(&mut w.out);
        }
    }
    w.out.extend_from_slice(&tail);
    w.end();
    Ok(())
}
