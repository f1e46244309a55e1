//! The transform author's kit: `maskpipe transform test` and `inspect`.
//!
//! Both work on a component file alone, in wasm isolation: no queue, no
//! database, and only the public test key. Both keep what they compile in
//! the same cache as `maskpipe run` (a Python component compiles for
//! seconds), so testing a component also warms the cache it is deployed
//! from.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use wasmtime::component::types::ComponentItem;
use wit_parser::decoding::DecodedWasm;

use crate::runtime::{self, Limits, Transform};
use crate::swap::vectors_path;
use crate::vectors;

/// Runs golden vectors through a component; prints a diff for each failure.
pub async fn test(
    component: &Path,
    vectors_file: Option<&Path>,
    cache_dir: Option<&Path>,
) -> Result<ExitCode> {
    let vectors_file = vectors_file.map_or_else(|| vectors_path(component), Path::to_path_buf);
    let started = Instant::now();
    let engine = runtime::engine_with_cache(cache_dir)?;
    let (count, failures) = vectors::check_file_with(&engine, component, &vectors_file).await?;
    for failure in &failures {
        println!(
            "FAIL line {} ({}):\n{}",
            failure.line,
            failure.name,
            failure.diff.trim_end()
        );
    }
    println!(
        "{}: {} passed, {} failed ({} in {} ms)",
        component.display(),
        count - failures.len(),
        failures.len(),
        vectors_file.display(),
        started.elapsed().as_millis()
    );
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Describes a component: digest, size, whether maskpipe would load it, its
/// reason codes and tables (as DDL), WIT world, imports and exports.
pub async fn inspect(component: &Path, cache_dir: Option<&Path>) -> Result<String> {
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let engine = runtime::engine_with_cache(cache_dir)?;
    let mut out = String::new();
    let _ = writeln!(out, "component  {}", component.display());
    let _ = writeln!(out, "size       {} bytes", bytes.len());

    let loaded = Transform::from_bytes(&engine, bytes.clone(), Limits::default()).await;
    match &loaded {
        Ok(transform) => {
            let _ = writeln!(out, "sha256     {}", transform.digest());
            let _ = writeln!(
                out,
                "verdict    loadable: imports only what maskpipe grants, exports the transformer world"
            );
            let _ = writeln!(out, "reasons    {}", transform.reason_codes().join(", "));
            let _ = writeln!(out, "\ntables (as --create-tables would create them)");
            for table in transform.schema().tables() {
                let _ = writeln!(out, "  {};", table.create_sql());
                for column in &table.columns {
                    if let Some(pii) = &column.pii {
                        let _ = writeln!(
                            out,
                            "    -- {}.{}: PII field `{}`, {}",
                            table.name,
                            column.name,
                            pii.field,
                            allowed(pii.allows)
                        );
                    }
                }
            }
        }
        Err(error) => {
            let _ = writeln!(out, "verdict    REFUSED: {error:#}");
        }
    }

    // The loaded component's compilation, reused: compiling CPython takes
    // seconds. A refused one is compiled again for its imports.
    let parsed = match &loaded {
        Ok(transform) => Some(transform.component().clone()),
        Err(_) => wasmtime::component::Component::from_binary(&engine, &bytes).ok(),
    };
    if let Some(parsed) = parsed {
        let component_type = parsed.component_type();
        let _ = writeln!(out, "\nimports");
        for (name, item) in component_type.imports(&engine) {
            // maskpipe:transform/types is imported for its type definitions
            // alone: say so, or it reads as a call into maskpipe.
            let types_only = match &item.ty {
                ComponentItem::ComponentInstance(instance) => !instance
                    .exports(&engine)
                    .any(|(_, export)| matches!(export.ty, ComponentItem::ComponentFunc(_))),
                _ => false,
            };
            let note = if types_only {
                ": type definitions only, no functions"
            } else {
                ""
            };
            let _ = writeln!(out, "  {name} ({}{note})", kind(&item.ty));
        }
        let _ = writeln!(out, "exports");
        for (name, item) in component_type.exports(&engine) {
            let _ = writeln!(out, "  {name} ({})", kind(&item.ty));
        }
    }

    match wit_parser::decoding::decode(&bytes) {
        Ok(DecodedWasm::Component(resolve, world)) => {
            let mut printer = wit_component::WitPrinter::default();
            if let Some(package) = resolve.worlds[world].package
                && printer.print(&resolve, package, &[]).is_ok()
            {
                let _ = writeln!(out, "\nWIT world\n{}", printer.output);
            }
        }
        Ok(DecodedWasm::WitPackage(..)) => {
            let _ = writeln!(out, "\n(a WIT package, not a component)");
        }
        Err(error) => {
            let _ = writeln!(out, "\n(no WIT world: {error})");
        }
    }
    Ok(out)
}

/// `masked or pseudonymized`: the protections a PII column allows.
fn allowed(allows: crate::schema::Allows) -> String {
    let names: Vec<&str> = [
        (allows.masked, "masked"),
        (allows.pseudonymized, "pseudonymized"),
        (allows.clear, "clear"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    names.join(" or ")
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "function",
        ComponentItem::CoreFunc(_) => "core function",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}
