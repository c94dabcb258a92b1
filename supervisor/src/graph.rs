//! Rendering a compiled DAG as Graphviz DOT or Mermaid, for `livecalc-supervisor graph`.

use crate::config::model::{Dag, Producer};
use std::fmt::Write;

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn dot(dag: &Dag) -> String {
    let mut out =
        String::from("digraph livecalc {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
    for s in &dag.sources {
        let _ = writeln!(
            out,
            "  \"src:{}\" [shape=cylinder, label=\"{}\\n{} rows\"];",
            quote(&s.name),
            quote(&s.name),
            s.rows
        );
    }
    for n in &dag.nodes {
        let _ = writeln!(
            out,
            "  \"{}\" [shape=box, label=\"{}\\n{}\\n{} rows x{} workers\"];",
            quote(&n.id),
            quote(&n.id),
            quote(&n.type_name),
            n.rows,
            n.workers
        );
        for i in &n.inputs {
            let (from, label) = match &i.from {
                Producer::Source(s) => (format!("src:{s}"), i.name.clone()),
                Producer::Node { node, output } => {
                    (node.clone(), format!("{output} -> {}", i.name))
                }
            };
            let style = if i.chunked { ", style=bold" } else { "" };
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [label=\"{}\"{style}];",
                quote(&from),
                quote(&n.id),
                quote(&label)
            );
        }
    }
    for o in &dag.outputs {
        let _ = writeln!(
            out,
            "  \"out:{0}.{1}\" [shape=note, label=\"{0}/{1}.parquet\"];\n  \"{0}\" -> \"out:{0}.{1}\";",
            quote(&o.node),
            quote(&o.output)
        );
    }
    out.push_str("}\n");
    out
}

pub fn mermaid(dag: &Dag) -> String {
    let id = |s: &str| s.replace('-', "_");
    let mut out = String::from("flowchart LR\n");
    for s in &dag.sources {
        let _ = writeln!(
            out,
            "  src_{}[(\"{} ({} rows)\")]",
            id(&s.name),
            s.name,
            s.rows
        );
    }
    for n in &dag.nodes {
        let _ = writeln!(
            out,
            "  node_{}[\"{}<br/>{}\"]",
            id(&n.id),
            n.id,
            n.type_name
        );
        for i in &n.inputs {
            let (from, label) = match &i.from {
                Producer::Source(s) => (format!("src_{}", id(s)), i.name.clone()),
                Producer::Node { node, output } => (
                    format!("node_{}", id(node)),
                    format!("{output} → {}", i.name),
                ),
            };
            let arrow = if i.chunked { "==>" } else { "-->" };
            let _ = writeln!(out, "  {from} {arrow}|{label}| node_{}", id(&n.id));
        }
    }
    for o in &dag.outputs {
        let _ = writeln!(
            out,
            "  out_{0}_{1}[/\"{2}/{3}.parquet\"/]\n  node_{0} --> out_{0}_{1}",
            id(&o.node),
            id(&o.output),
            o.node,
            o.output
        );
    }
    out
}
