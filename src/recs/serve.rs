//! Serving: candidate lists from the current model (or, before the first training, from SQLite),
//! filtered against SQLite (existence, stock, category). Blocking: call on a reader connection from
//! `Lease::blocking`.

use std::collections::HashSet;

use rusqlite::Connection;

use super::model::{self, Model, ModelInfo, TrainParams};
use super::{store, Reason, Rec};
use crate::error::{Code, Error};

/// Filters applied to every candidate list.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub in_stock_only: bool,
    pub category: Option<String>,
    pub exclude: HashSet<String>,
}

/// Keeps candidates (best first, each product once) that exist and pass `f`, up to `limit`.
fn finish(c: &Connection, cands: Vec<(String, f32, Reason)>, f: &Filter, limit: usize) -> Result<Vec<Rec>, Error> {
    let mut out: Vec<Rec> = Vec::with_capacity(limit);
    let mut seen: HashSet<String> = HashSet::new();
    let mut i = 0;
    while out.len() < limit && i < cands.len() {
        let end = (i + (limit - out.len()) * 2 + 8).min(cands.len());
        let chunk = &cands[i..end];
        let ids: Vec<&str> = chunk.iter().map(|c| c.0.as_str()).filter(|id| !f.exclude.contains(*id) && !seen.contains(*id)).collect();
        let facts = store::product_facts(c, &ids)?;
        for (id, score, reason) in chunk {
            if out.len() >= limit || f.exclude.contains(id) || seen.contains(id) {
                continue;
            }
            let Some((in_stock, cats)) = facts.get(id) else { continue };
            if f.in_stock_only && !in_stock {
                continue;
            }
            if let Some(want) = &f.category {
                if !cats.iter().any(|c| c.eq_ignore_ascii_case(want)) {
                    continue;
                }
            }
            seen.insert(id.clone());
            out.push(Rec { product_id: id.clone(), score: (*score * 1e4).round() / 1e4, reason: *reason });
        }
        i = end;
    }
    Ok(out)
}

/// How many candidates to rank before filtering.
fn depth(limit: usize, f: &Filter) -> usize {
    if f.category.is_some() {
        usize::MAX
    } else {
        limit * 4 + f.exclude.len() + 50
    }
}

fn push_ranked(m: &Model, out: &mut Vec<(String, f32, Reason)>, scores: &[f32], skip: &HashSet<u32>, max: usize, reason: Reason) {
    for (i, s) in model::ranked(scores, |i| skip.contains(&i), max) {
        out.push((m.items[i as usize].clone(), s, reason));
    }
}

fn push_popular(m: &Model, out: &mut Vec<(String, f32, Reason)>, skip: &HashSet<u32>, max: usize) {
    let top = m.by_popularity.first().map_or(1.0, |&i| m.popularity[i as usize]).max(f32::MIN_POSITIVE);
    for &i in m.by_popularity.iter().filter(|i| !skip.contains(i)).take(max) {
        out.push((m.items[i as usize].clone(), m.popularity[i as usize] / top, Reason::Trending));
    }
}

/// All-time trending from SQLite (no model yet).
fn push_sql_trending(c: &Connection, out: &mut Vec<(String, f32, Reason)>, max: usize) -> Result<(), Error> {
    let rows = store::trending(c, 0, max)?;
    let top = rows.first().map_or(1.0, |r| r.1).max(f32::MIN_POSITIVE);
    out.extend(rows.into_iter().map(|(id, s)| (id, s / top, Reason::Trending)));
    Ok(())
}

/// The mean embedding of `items` (unit length), if any has one.
fn mean_vector(m: &Model, items: impl Iterator<Item = (u32, f32)>) -> Option<Vec<f32>> {
    let mut acc: Option<Vec<f32>> = None;
    for (i, w) in items {
        if let Some(v) = m.content.vector(i as usize) {
            let a = acc.get_or_insert_with(|| vec![0.0; v.len()]);
            for (x, y) in a.iter_mut().zip(v) {
                *x += w * y;
            }
        }
    }
    let mut a = acc?;
    let norm = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm <= 0.0 {
        return None;
    }
    a.iter_mut().for_each(|x| *x /= norm);
    Some(a)
}

/// `GET /recommendations`: personal (collaborative), then content-similar to the customer's items,
/// then trending. A customer without history gets trending.
pub fn recommend(
    c: &Connection,
    m: Option<&Model>,
    customer_id: Option<&str>,
    exclude_purchased: bool,
    mut f: Filter,
    limit: usize,
    p: &TrainParams,
) -> Result<Vec<Rec>, Error> {
    let (rows, purchased) = match customer_id {
        Some(id) => store::customer_history(c, id)?,
        None => (Vec::new(), Vec::new()),
    };
    if exclude_purchased {
        f.exclude.extend(purchased);
    }
    let mut cands = Vec::new();
    let max = depth(limit, &f);
    match m {
        Some(m) => {
            let skip: HashSet<u32> = f.exclude.iter().filter_map(|id| m.index.get(id).copied()).collect();
            let hist = model::user_history(&m.index, &rows, p);
            if !hist.is_empty() {
                push_ranked(m, &mut cands, &m.collab_scores(&hist), &skip, max, Reason::Personal);
                // Content fills in only when the collaborative part has too little to say (new
                // products, sparse data): the n × 384 scan is the costliest step of a request.
                if cands.len() < 2 * limit {
                    if let Some(s) = mean_vector(m, hist.iter().copied()).and_then(|q| m.content.by_vector(&q)) {
                        let mut skip2 = skip.clone();
                        skip2.extend(hist.iter().map(|h| h.0));
                        push_ranked(m, &mut cands, &s, &skip2, max, Reason::Similar);
                    }
                }
            }
            push_popular(m, &mut cands, &skip, max);
        }
        None => push_sql_trending(c, &mut cands, max.min(10_000))?,
    }
    finish(c, cands, &f, limit)
}

/// Content similarity to product `id` even if the model predates it (its own embedding or words).
fn content_to(c: &Connection, m: &Model, id: &str) -> Result<Option<Vec<f32>>, Error> {
    if let Some(&i) = m.index.get(id) {
        return Ok(Some(m.content.to_item(i as usize)));
    }
    let row = store::load_products_by_id(c, id)?;
    Ok(row.map(|p| match p.embedding.as_deref().and_then(|v| m.content.by_vector(v)) {
        Some(s) => s,
        None => m.content.by_words(&p.words),
    }))
}

/// A model over the products table only (no interactions), for requests before the first training.
fn content_only(c: &Connection) -> Result<Model, Error> {
    let products = store::load_products(c)?;
    let (collab, _) =
        model::train(&model::TrainData { products: products.clone(), interactions: Vec::new() }, &TrainParams::default()).map_err(Error::internal)?;
    let info = ModelInfo {
        version: 0,
        trained_at: String::new(),
        data_version: 0,
        method: "popularity".into(),
        content: String::new(),
        training_ms: 0,
        counts: Default::default(),
        evaluation: None,
    };
    Model::assemble(info, &products, collab).map_err(Error::internal)
}

fn require_product(c: &Connection, id: &str) -> Result<(), Error> {
    if store::product_facts(c, &[id])?.is_empty() {
        return Err(Error::not_found(Code::ProductNotFound, "no such product"));
    }
    Ok(())
}

/// `GET /products/{id}/similar`: content only.
pub fn similar(c: &Connection, m: Option<&Model>, id: &str, f: Filter, limit: usize) -> Result<Vec<Rec>, Error> {
    require_product(c, id)?;
    let tmp;
    let m = match m {
        Some(m) => m,
        None => {
            tmp = content_only(c)?;
            &tmp
        }
    };
    let mut cands = Vec::new();
    match precomputed(m, id, &f, limit) {
        Some(row) => cands.extend(row.into_iter().map(|(j, w)| (m.items[j as usize].clone(), w, Reason::Similar))),
        None => {
            if let Some(s) = content_to(c, m, id)? {
                let skip: HashSet<u32> = m.index.get(id).copied().into_iter().collect();
                push_ranked(m, &mut cands, &s, &skip, depth(limit, &f), Reason::Similar);
            }
        }
    }
    let mut f = f;
    f.exclude.insert(id.to_string());
    finish(c, cands, &f, limit)
}

/// The precomputed content neighbours of `id`, if the model has them for it and they are enough for
/// the request (no category filter, at least 2 × limit of them).
fn precomputed(m: &Model, id: &str, f: &Filter, limit: usize) -> Option<Vec<(u32, f32)>> {
    let i = *m.index.get(id)?;
    let row: Vec<(u32, f32)> = m.similar.as_ref()?.row(i).collect();
    (f.category.is_none() && m.content.has_vector(i as usize) && row.len() >= (2 * limit).min(m.len().saturating_sub(1))).then_some(row)
}

/// Weight of the collaborative part in `related` (the rest is content similarity).
const RELATED_COLLAB_WEIGHT: f32 = 0.7;

/// `GET /products/{id}/related`: customers also bought, blended with content similarity.
pub fn related(c: &Connection, m: Option<&Model>, id: &str, f: Filter, limit: usize) -> Result<Vec<Rec>, Error> {
    require_product(c, id)?;
    let Some(m) = m else { return similar(c, None, id, f, limit) };
    let n = m.len();
    let mut collab = vec![0f32; n];
    if let Some(&i) = m.index.get(id) {
        let nb: Vec<(u32, f32)> = m.neighbors(i).collect();
        let top = nb.first().map_or(1.0, |x| x.1).max(f32::MIN_POSITIVE);
        for (j, w) in nb {
            collab[j as usize] = w / top;
        }
    }
    // The content side: the precomputed neighbours when they suffice, else a scan of all products.
    let (content, pool): (Vec<f32>, Vec<usize>) = match precomputed(m, id, &f, limit) {
        Some(row) => {
            let mut dense = vec![0f32; n];
            let mut pool: Vec<usize> = (0..n).filter(|&j| collab[j] > 0.0).collect();
            for (j, w) in row {
                dense[j as usize] = w;
                pool.push(j as usize);
            }
            pool.sort_unstable();
            pool.dedup();
            (dense, pool)
        }
        None => (content_to(c, m, id)?.unwrap_or_else(|| vec![0.0; n]), (0..n).collect()),
    };
    let mut scored: Vec<(u32, f32, Reason)> = pool
        .into_iter()
        .filter(|&j| m.items[j] != id)
        .map(|j| {
            let (a, b) = (RELATED_COLLAB_WEIGHT * collab[j], (1.0 - RELATED_COLLAB_WEIGHT) * content[j].max(0.0));
            (j as u32, a + b, if a >= b { Reason::BoughtTogether } else { Reason::Similar })
        })
        .filter(|x| x.1 > 0.0)
        .collect();
    scored.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(depth(limit, &f).min(n));
    let mut cands: Vec<(String, f32, Reason)> = scored.into_iter().map(|(j, s, r)| (m.items[j as usize].clone(), s, r)).collect();
    let mut f = f;
    f.exclude.insert(id.to_string());
    push_popular(m, &mut cands, &HashSet::new(), limit + 1);
    finish(c, cands, &f, limit)
}

/// `POST /recommendations/cart`: frequently bought together with the cart, then similar, then trending.
pub fn cart(c: &Connection, m: Option<&Model>, ids: &[String], f: Filter, limit: usize) -> Result<Vec<Rec>, Error> {
    let mut f = f;
    f.exclude.extend(ids.iter().cloned());
    let mut cands = Vec::new();
    let max = depth(limit, &f);
    match m {
        Some(m) => {
            let hist: Vec<(u32, f32)> = ids.iter().filter_map(|id| m.index.get(id)).map(|&i| (i, 1.0)).collect();
            let skip: HashSet<u32> = hist.iter().map(|h| h.0).collect();
            let s = m.collab_scores(&hist);
            let top = s.iter().copied().fold(0f32, f32::max).max(f32::MIN_POSITIVE);
            let s: Vec<f32> = s.into_iter().map(|x| x / top).collect();
            push_ranked(m, &mut cands, &s, &skip, max, Reason::BoughtTogether);
            if cands.len() < 2 * limit {
                if let Some(s) = mean_vector(m, hist.iter().copied()).and_then(|q| m.content.by_vector(&q)) {
                    push_ranked(m, &mut cands, &s, &skip, max, Reason::Similar);
                }
            }
            push_popular(m, &mut cands, &skip, max);
        }
        None => push_sql_trending(c, &mut cands, max.min(10_000))?,
    }
    finish(c, cands, &f, limit)
}

/// `GET /recommendations/trending`: activity in the window, then (to fill) the model's decayed popularity.
pub fn trending(c: &Connection, m: Option<&Model>, since: i64, f: Filter, limit: usize) -> Result<Vec<Rec>, Error> {
    let max = depth(limit, &f).min(10_000);
    let rows = store::trending(c, since, max)?;
    let top = rows.first().map_or(1.0, |r| r.1).max(f32::MIN_POSITIVE);
    let mut cands: Vec<(String, f32, Reason)> = rows.into_iter().map(|(id, s)| (id, s / top, Reason::Trending)).collect();
    if let Some(m) = m {
        // Below anything in the window.
        let mut fill = Vec::new();
        push_popular(m, &mut fill, &HashSet::new(), max);
        cands.extend(fill.into_iter().map(|(id, s, r)| (id, s * 0.01, r)));
    }
    finish(c, cands, &f, limit)
}
