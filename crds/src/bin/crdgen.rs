//! Writes the chart's CRDs: `crdgen [DIR]` (default `charts/sextant/crds`).

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "charts/sextant/crds".into());
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in sextant_crds::all_crds() {
        let path = std::path::Path::new(&dir).join(file);
        std::fs::write(&path, sextant_crds::crd_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
