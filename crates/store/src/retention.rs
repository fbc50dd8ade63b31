//! Retention: which paths gc keeps besides the closures of explicit roots.
//!
//! Policies, each naming roots whose closures are kept (a kept path never loses a reference, as
//! in Nix's own gc; attic's time-based gc works per path and can leave a kept path without its
//! dependencies):
//! - **roots**: the paths the operator names (`--keep`, `--keep-file`);
//! - **within**: paths registered (their record written) or last served within a duration —
//!   cachix's "last accessed or created" rule, with "served" as `refstrip serve --served-state`
//!   notes it (a narinfo answered or a NAR sent);
//! - **newest**: the newest N paths (by registration time) of each package, the package being the
//!   path's name without its version as Nix's `DrvName` splits it (plus the output, see
//!   [`package_of`](crate::package_of)).
//!
//! [`Store::retention_plan`] computes the plan of all of them together, and what each would free
//! on its own, from one closure walk.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use refstrip_read::{hash_part_of, Visit};

use crate::store::{GcPlan, Store, StoreError};
use crate::{name_of, package_of};

/// What to keep.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// Hash parts of the paths to keep (with their closure).
    pub roots: Vec<String>,
    /// Keep paths registered or last served within this long of now.
    pub keep_within: Option<Duration>,
    /// Keep the newest this many paths of each package.
    pub keep_newest: Option<usize>,
}

/// A path of a package, for `--keep-newest`: registration time, name, hash part.
type Member<'a> = (SystemTime, &'a str, &'a str);

/// One policy of a [`Retention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Roots,
    Within,
    Newest,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Roots => "roots",
            Policy::Within => "keep-within",
            Policy::Newest => "keep-newest",
        }
    }
}

/// What one policy would do on its own.
#[derive(Debug, Clone)]
pub struct PolicyEffect {
    pub policy: Policy,
    /// Paths the policy names itself (before closure).
    pub roots: usize,
    /// Paths it keeps (the closure of its roots).
    pub keep: usize,
    /// Paths and pack bytes gc would remove with this policy alone.
    pub remove_paths: usize,
    pub freed_bytes: u64,
}

/// The plan of all policies together, and each policy's effect alone.
#[derive(Debug, Clone)]
pub struct RetentionPlan {
    pub plan: GcPlan,
    pub policies: Vec<PolicyEffect>,
    /// Of the `within` roots: how many were registered, and how many served, within the duration.
    pub registered_within: usize,
    pub served_within: usize,
}

impl Store {
    /// When each path's record was written, by hash part (the backend's modification time of
    /// `paths/<hash part>`).
    pub fn registration_times(&self) -> Result<HashMap<String, SystemTime>, StoreError> {
        Ok(self
            .backend
            .list_modified("paths/")?
            .into_iter()
            .filter_map(|(key, time)| Some((key.strip_prefix("paths/")?.to_string(), time)))
            .filter(|(h, _)| hash_part_of(h).as_deref() == Some(h.as_str()))
            .collect())
    }

    /// The gc plan of `retention` at time `now`, `served` being when each path was last served
    /// (hash part → time; paths the store no longer has are ignored). A root the store lacks is an
    /// error unless `force`, as for [`gc_plan`](Self::gc_plan).
    pub fn retention_plan(
        &self,
        retention: &Retention,
        served: &HashMap<String, SystemTime>,
        now: SystemTime,
        force: bool,
    ) -> Result<RetentionPlan, StoreError> {
        let mut missing = Vec::new();
        let mut roots = Vec::new();
        for root in &retention.roots {
            match self.reader().try_record(root)? {
                Some(_) => roots.push(root.clone()),
                None => missing.push(root.clone()),
            }
        }
        if !missing.is_empty() && !force {
            return Err(StoreError::UnknownRoots(missing));
        }
        let paths = self.catalog().paths()?;
        let needs_times = retention.keep_within.is_some() || retention.keep_newest.is_some();
        let registered = match needs_times {
            true => self.registration_times()?,
            false => HashMap::new(),
        };
        let mut per_policy: Vec<(Policy, Vec<String>)> = vec![(Policy::Roots, roots)];
        let (mut registered_within, mut served_within) = (0, 0);
        if let Some(within) = retention.keep_within {
            let since = now.checked_sub(within).unwrap_or(SystemTime::UNIX_EPOCH);
            let mut recent = Vec::new();
            for (hash_part, _) in &paths {
                let by_registration = registered.get(hash_part).is_some_and(|t| *t >= since);
                let by_serving = served.get(hash_part).is_some_and(|t| *t >= since);
                registered_within += by_registration as usize;
                served_within += by_serving as usize;
                if by_registration || by_serving {
                    recent.push(hash_part.clone());
                }
            }
            per_policy.push((Policy::Within, recent));
        }
        if let Some(n) = retention.keep_newest {
            let mut packages: HashMap<(&str, &str), Vec<Member>> = HashMap::new();
            for (hash_part, store_path) in &paths {
                let name = name_of(store_path);
                let time = registered
                    .get(hash_part)
                    .copied()
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                packages
                    .entry(package_of(name))
                    .or_default()
                    .push((time, name, hash_part));
            }
            let mut newest = Vec::new();
            for mut members in packages.into_values() {
                // Newest first; the same second (one ingest) by name, highest first.
                members.sort_by(|a, b| b.cmp(a));
                newest.extend(members.iter().take(n).map(|(_, _, h)| h.to_string()));
            }
            per_policy.push((Policy::Newest, newest));
        }

        // One walk over the closure of every root; each policy's closure is then computed in
        // memory from the references.
        let all_roots: Vec<String> = per_policy
            .iter()
            .flat_map(|(_, r)| r.iter().cloned())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let walked = self
            .reader()
            .closure(&all_roots, |_| Ok::<_, StoreError>(Visit::Include))?;
        let references: HashMap<String, Vec<String>> = walked
            .records
            .iter()
            .map(|r| {
                (
                    r.hash_part().to_string(),
                    r.reference_hash_parts().map(String::from).collect(),
                )
            })
            .collect();
        if self.backend.is_shared() {
            // Judge references by every record in the bucket now, condemned packs included.
            self.refresh_catalog(true)?;
        }
        let paths = self.catalog().paths()?;
        let mut effects = Vec::new();
        let mut keep_all = HashSet::new();
        for (policy, roots) in &per_policy {
            let keep = closure_of(roots, &references);
            let freed = self.catalog().packs_unreferenced_by(&keep)?;
            effects.push(PolicyEffect {
                policy: *policy,
                roots: roots.len(),
                keep: keep.len(),
                remove_paths: paths.iter().filter(|(h, _)| !keep.contains(h)).count(),
                freed_bytes: freed.iter().map(|(_, size)| size).sum(),
            });
            keep_all.extend(keep);
        }
        let plan = GcPlan {
            remove_paths: paths
                .into_iter()
                .filter(|(h, _)| !keep_all.contains(h))
                .collect(),
            remove_packs: self.catalog().packs_unreferenced_by(&keep_all)?,
            keep: keep_all,
            missing_roots: missing,
        };
        Ok(RetentionPlan {
            plan,
            policies: effects,
            registered_within,
            served_within,
        })
    }
}

/// `roots` and everything they reach through `references`.
fn closure_of(roots: &[String], references: &HashMap<String, Vec<String>>) -> HashSet<String> {
    let mut seen: HashSet<String> = roots.iter().cloned().collect();
    let mut queue: VecDeque<&String> = roots.iter().collect();
    while let Some(h) = queue.pop_front() {
        for r in references.get(h).into_iter().flatten() {
            if seen.insert(r.clone()) {
                queue.push_back(r);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_split_as_nix_splits_names() {
        for (name, package) in [
            ("hello-2.12", ("hello", "")),
            ("hello-2.12-man", ("hello", "man")),
            ("gtk+3-3.24.34-dev", ("gtk+3", "dev")),
            ("foo-bar-1.0", ("foo-bar", "")),
            ("foo-unstable-2023-01-01", ("foo-unstable", "")),
            ("python3.10-requests-2.28.1", ("python3.10-requests", "")),
            ("source", ("source", "")),
            ("unit-script-foo-start", ("unit-script-foo-start", "")),
            ("glibc-2.35-224-bin", ("glibc", "bin")),
            ("x-", ("x-", "")),
        ] {
            assert_eq!(package_of(name), package, "{name}");
        }
    }

    #[test]
    fn closures_follow_references() {
        let refs: HashMap<String, Vec<String>> = [
            ("a", vec!["b", "a"]),
            ("b", vec!["c"]),
            ("c", vec![]),
            ("d", vec!["c"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        let got = closure_of(&["a".to_string()], &refs);
        let want: HashSet<String> = ["a", "b", "c"].into_iter().map(String::from).collect();
        assert_eq!(got, want);
        assert!(closure_of(&[], &refs).is_empty());
    }
}
