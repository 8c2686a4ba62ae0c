//! Training: pure functions from the tenant's data to the collaborative part of a model, the
//! content neighbours, and the leave-last-out evaluation. See [`super::model`] for the method.

use std::collections::HashMap;

use super::linalg;
use super::model::{ranked, user_history, Collab, Content, Counts, Evaluation, Model, ModelInfo, ProductRow, Sparse, TrainData, TrainParams};

/// The `k` most similar products of every product with an embedding (cosine), computed in blocks of
/// rows with candle matmuls: n² × 384 multiply-adds, so only for catalogs up to a configured size.
pub fn content_neighbors(products: &[ProductRow], k: usize) -> anyhow::Result<Option<Sparse>> {
    let content = Content::build(products)?;
    let Some(emb) = &content.emb else { return Ok(None) };
    let n = products.len();
    let et = emb.t()?.contiguous()?;
    let mut rows: Vec<Vec<(u32, f32)>> = Vec::with_capacity(n);
    const BLOCK: usize = 256;
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        let sims: Vec<f32> = emb.narrow(0, start, len)?.matmul(&et)?.flatten_all()?.to_vec1()?;
        for r in 0..len {
            let i = start + r;
            if !content.has_emb[i] {
                rows.push(Vec::new());
                continue;
            }
            rows.push(top_positive(&sims[r * n..(r + 1) * n], i, k));
        }
        start += len;
    }
    Ok(Some(Sparse::from_rows(rows)))
}

/// `x_ui` per user from raw interactions (see the module docs). Users in first-seen order.
pub fn user_matrix(data: &TrainData, index: &HashMap<String, u32>, half_life_secs: f64) -> Vec<Vec<(u32, f32)>> {
    let t_max = data.interactions.iter().map(|i| i.at).max().unwrap_or(0);
    let mut users: HashMap<&str, usize> = HashMap::new();
    let mut rows: Vec<HashMap<u32, f32>> = Vec::new();
    for it in &data.interactions {
        let Some(&item) = index.get(&it.product) else { continue };
        let u = *users.entry(it.user.as_str()).or_insert_with(|| {
            rows.push(HashMap::new());
            rows.len() - 1
        });
        let age = (t_max - it.at).max(0) as f64;
        let decay = 0.5f64.powf(age / half_life_secs.max(1.0)) as f32;
        *rows[u].entry(item).or_insert(0.0) += it.weight * decay;
    }
    rows.into_iter()
        .map(|r| {
            let mut v: Vec<(u32, f32)> = r.into_iter().map(|(i, x)| (i, x.min(1.0))).collect();
            v.sort_unstable_by_key(|p| p.0);
            v
        })
        .collect()
}

/// Keeps the `k` largest positive entries of `row` (dense, length n), skipping `skip`.
fn top_positive(row: &[f32], skip: usize, k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = row.iter().enumerate().filter(|(j, w)| *j != skip && **w > 0.0).map(|(j, w)| (j as u32, *w)).collect();
    if v.len() > k {
        v.select_nth_unstable_by(k, |a, b| b.1.total_cmp(&a.1));
        v.truncate(k);
    }
    v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// Trains the collaborative part over `n` items from user rows.
pub fn train_collab(users: &[Vec<(u32, f32)>], n: usize, p: &TrainParams) -> anyhow::Result<Collab> {
    let mut popularity = vec![0f32; n];
    let mut active_map = vec![u32::MAX; n];
    let mut active: Vec<u32> = Vec::new();
    for row in users {
        for &(i, x) in row {
            popularity[i as usize] += x;
            if active_map[i as usize] == u32::MAX {
                active_map[i as usize] = active.len() as u32;
                active.push(i);
            }
        }
    }
    let m = active.len();
    let mut rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    let method = if m == 0 {
        "popularity"
    } else if m <= p.ease_max_items {
        for (i, r) in ease_rows(users, &active, n, p)? {
            rows[i as usize] = r;
        }
        "ease"
    } else {
        rows = knn_rows(users, n, p);
        if p.ease_max_items >= 2 && !p.knn_only {
            // EASE over the `ease_max_items` most popular products (where most of the demand is),
            // item-kNN for the rest. A head row keeps its EASE weights and takes kNN weights towards
            // tail products rescaled to the EASE row's range; tail rows are rescaled by the median
            // of those factors, so both kinds of weight compete on one scale.
            let mut head = active.clone();
            head.sort_by(|a, b| popularity[*b as usize].total_cmp(&popularity[*a as usize]).then(a.cmp(b)));
            head.truncate(p.ease_max_items);
            let in_head: std::collections::HashSet<u32> = head.iter().copied().collect();
            let mut factors = Vec::new();
            for (i, er) in ease_rows(users, &head, n, p)? {
                let knn = std::mem::take(&mut rows[i as usize]);
                let (emax, kmax) = (er.first().map_or(0.0, |x| x.1), knn.first().map_or(0.0, |x| x.1));
                let f = if kmax > 0.0 && emax > 0.0 { emax / kmax } else { 0.0 };
                if f > 0.0 {
                    factors.push(f);
                }
                let mut r = er;
                r.extend(knn.into_iter().filter(|(j, _)| !in_head.contains(j)).map(|(j, w)| (j, w * f)));
                r.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
                r.truncate(p.neighbors);
                rows[i as usize] = r;
            }
            factors.sort_by(f32::total_cmp);
            let f = factors.get(factors.len() / 2).copied().unwrap_or(1.0);
            for (i, r) in rows.iter_mut().enumerate() {
                if !in_head.contains(&(i as u32)) {
                    r.iter_mut().for_each(|x| x.1 *= f);
                }
            }
            "ease_head+item_knn"
        } else {
            "item_knn"
        }
    };
    let mut offsets = Vec::with_capacity(n + 1);
    let (mut nbr, mut w) = (Vec::new(), Vec::new());
    offsets.push(0u32);
    for r in rows {
        for (j, x) in r {
            nbr.push(j);
            w.push(x);
        }
        offsets.push(nbr.len() as u32);
    }
    Ok(Collab { method, offsets, nbr, w, popularity, users: users.len(), active: m, similar: None })
}

/// EASE over `items` (global indices): their rows, in global indices, strongest first.
fn ease_rows(users: &[Vec<(u32, f32)>], items: &[u32], n: usize, p: &TrainParams) -> anyhow::Result<Vec<(u32, Vec<(u32, f32)>)>> {
    let m = items.len();
    let mut local = vec![u32::MAX; n];
    for (k, &i) in items.iter().enumerate() {
        local[i as usize] = k as u32;
    }
    // Gram matrix, accumulated sparsely (X is mostly zeros).
    let mut g = vec![0f32; m * m];
    let mut loc: Vec<(usize, f32)> = Vec::new();
    for row in users {
        loc.clear();
        loc.extend(row.iter().filter(|(i, _)| local[*i as usize] != u32::MAX).map(|&(i, x)| (local[i as usize] as usize, x)));
        for &(a, xa) in &loc {
            let base = a * m;
            for &(b, xb) in &loc {
                g[base + b] += xa * xb;
            }
        }
    }
    for a in 0..m {
        g[a * m + a] += p.ease_lambda.max(1.0);
    }
    let pinv = linalg::spd_inverse(&linalg::square(g, m)?)?;
    let pm: Vec<f32> = pinv.flatten_all()?.to_vec1()?;
    drop(pinv);
    let diag: Vec<f32> = (0..m).map(|j| pm[j * m + j]).collect();
    let mut brow = vec![0f32; m];
    let mut out = Vec::with_capacity(m);
    for a in 0..m {
        for b in 0..m {
            brow[b] = -pm[a * m + b] / diag[b];
        }
        brow[a] = 0.0;
        out.push((items[a], top_positive(&brow, a, p.neighbors).into_iter().map(|(b, w)| (items[b as usize], w)).collect()));
    }
    Ok(out)
}

/// Item-item cosine with shrinkage over each user's `knn_max_history` strongest items.
fn knn_rows(users: &[Vec<(u32, f32)>], n: usize, p: &TrainParams) -> Vec<Vec<(u32, f32)>> {
    let mut norms = vec![0f32; n];
    let mut co: Vec<HashMap<u32, f32>> = vec![HashMap::new(); n];
    for row in users {
        let mut r = row.clone();
        if r.len() > p.knn_max_history {
            r.select_nth_unstable_by(p.knn_max_history, |a, b| b.1.total_cmp(&a.1));
            r.truncate(p.knn_max_history);
        }
        for &(i, xi) in &r {
            norms[i as usize] += xi * xi;
            for &(j, xj) in &r {
                if i != j {
                    *co[i as usize].entry(j).or_insert(0.0) += xi * xj;
                }
            }
        }
    }
    let norms: Vec<f32> = norms.into_iter().map(f32::sqrt).collect();
    (0..n)
        .map(|i| {
            let c = std::mem::take(&mut co[i]);
            let mut v: Vec<(u32, f32)> = c.into_iter().map(|(j, s)| (j, s / (norms[i] * norms[j as usize] + p.knn_shrinkage))).collect();
            if v.len() > p.neighbors {
                v.select_nth_unstable_by(p.neighbors, |a, b| b.1.total_cmp(&a.1));
                v.truncate(p.neighbors);
            }
            v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            v
        })
        .collect()
}

/// Products of the catalog that have interactions.
pub fn active_products(data: &TrainData) -> usize {
    let catalog: std::collections::HashSet<&str> = data.products.iter().map(|p| p.id.as_str()).collect();
    data.interactions
        .iter()
        .filter(|i| catalog.contains(i.product.as_str()))
        .map(|i| i.product.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

pub fn train(data: &TrainData, p: &TrainParams) -> anyhow::Result<(Collab, usize)> {
    let index: HashMap<String, u32> = data.products.iter().enumerate().map(|(i, r)| (r.id.clone(), i as u32)).collect();
    let users = user_matrix(data, &index, p.half_life_secs);
    let interactions = users.iter().map(|u| u.len()).sum();
    Ok((train_collab(&users, data.products.len(), p)?, interactions))
}

/// Leave-last-out on up to `eval_users` customers with at least three purchased products: their last
/// purchase is removed, a model is trained on the rest, and the top 10 (purchased excluded) is scored.
pub fn evaluate(data: &TrainData, p: &TrainParams) -> anyhow::Result<Option<Evaluation>> {
    if p.eval_users == 0 {
        return Ok(None);
    }
    let index: HashMap<String, u32> = data.products.iter().enumerate().map(|(i, r)| (r.id.clone(), i as u32)).collect();
    // Last purchase (latest time, then latest position) per user, and the number of distinct purchases.
    let mut last: HashMap<&str, (i64, usize)> = HashMap::new();
    let mut bought: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
    for (k, it) in data.interactions.iter().enumerate() {
        if !it.purchase || !index.contains_key(&it.product) {
            continue;
        }
        bought.entry(&it.user).or_default().insert(&it.product);
        let e = last.entry(&it.user).or_insert((it.at, k));
        if (it.at, k) >= *e {
            *e = (it.at, k);
        }
    }
    let mut eligible: Vec<(&str, usize)> = last.iter().filter(|(u, _)| bought[*u].len() >= 3).map(|(u, (_, k))| (*u, *k)).collect();
    if eligible.len() < 10 {
        return Ok(None);
    }
    // A deterministic sample: sort by a hash of the user id.
    eligible.sort_by_key(|(u, _)| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        u.hash(&mut h);
        h.finish()
    });
    eligible.truncate(p.eval_users);
    let held: HashMap<&str, usize> = eligible.iter().copied().collect();
    let held_rows: std::collections::HashSet<usize> = eligible.iter().map(|(_, k)| *k).collect();
    let train_data = TrainData {
        products: Vec::new(),
        interactions: data
            .interactions
            .iter()
            .enumerate()
            .filter(|(k, it)| {
                // Drop the held-out line and anything of that user at or after it.
                if held_rows.contains(k) {
                    return false;
                }
                match held.get(it.user.as_str()) {
                    Some(&hk) => it.at < data.interactions[hk].at,
                    None => true,
                }
            })
            .map(|(_, it)| it.clone())
            .collect(),
    };
    let users = user_matrix(&train_data, &index, p.half_life_secs);
    let collab = train_collab(&users, data.products.len(), p)?;
    let info = ModelInfo {
        version: 0,
        trained_at: String::new(),
        data_version: 0,
        method: collab.method.into(),
        content: String::new(),
        training_ms: 0,
        counts: Counts::default(),
        evaluation: None,
    };
    let products: Vec<ProductRow> = data.products.iter().map(|r| ProductRow { id: r.id.clone(), words: Vec::new(), embedding: None }).collect();
    let model = Model::assemble(info, &products, collab)?;
    let mut per_user: HashMap<&str, Vec<(String, f32, i64)>> = HashMap::new();
    for it in &train_data.interactions {
        if held.contains_key(it.user.as_str()) {
            per_user.entry(&it.user).or_default().push((it.product.clone(), it.weight, it.at));
        }
    }
    let (mut hits, mut ndcg) = (0usize, 0f64);
    for (u, k) in &eligible {
        let rows = per_user.remove(u).unwrap_or_default();
        let purchased: std::collections::HashSet<u32> =
            train_data.interactions.iter().filter(|it| it.user == *u && it.purchase).filter_map(|it| index.get(&it.product).copied()).collect();
        let hist = user_history(&model.index, &rows, p);
        let mut top = ranked(&model.collab_scores(&hist), |i| purchased.contains(&i), 10);
        for &i in &model.by_popularity {
            if top.len() >= 10 {
                break;
            }
            if !purchased.contains(&i) && !top.iter().any(|t| t.0 == i) {
                top.push((i, 0.0));
            }
        }
        let target = index[&data.interactions[*k].product];
        if let Some(pos) = top.iter().position(|t| t.0 == target) {
            hits += 1;
            ndcg += 1.0 / ((pos + 2) as f64).log2();
        }
    }
    let n = eligible.len() as f64;
    Ok(Some(Evaluation { protocol: "leave-last-purchase-out".into(), users: eligible.len(), hr_at_10: hits as f64 / n, ndcg_at_10: ndcg / n }))
}
