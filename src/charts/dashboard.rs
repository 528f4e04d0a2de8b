//! Dashboard declarations: reading `<dir>/<name>.toml`, the dashboards
//! compiled in from `dashboards/`, and the checks on panel files and sizes.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::{Dashboard, Panel};

/// Default panel size in pixels.
pub(super) const DEFAULT_WIDTH: u32 = 1200;
/// Default panel height in pixels (bar charts grow with the number of bars).
pub(super) const DEFAULT_HEIGHT: u32 = 700;
pub(super) const MIN_SIDE: u32 = 300;
pub(super) const MAX_SIDE: u32 = 8000;

impl Panel {
    /// Width and height requested by the panel, with defaults applied.
    pub fn size(&self) -> (u32, u32) {
        (
            self.width.unwrap_or(DEFAULT_WIDTH),
            self.height.unwrap_or(DEFAULT_HEIGHT),
        )
    }

    /// The panel's title: its own, or its kind's default.
    pub fn title(&self) -> String {
        self.title
            .clone()
            .unwrap_or_else(|| self.kind.default_title().to_string())
    }

    pub(super) fn validate(&self) -> Result<()> {
        let f = &self.file;
        let plain = !f.is_empty()
            && !f.starts_with('.')
            && !f.contains(['/', '\\', '\0'])
            && f.to_ascii_lowercase().ends_with(".png")
            && f.len() > 4;
        if !plain {
            bail!(
                "panel {}: file {:?} must be a plain file name ending in .png (no directories)",
                self.kind,
                f
            );
        }
        for (what, v) in [("width", self.width), ("height", self.height)] {
            if let Some(v) = v {
                if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
                    bail!(
                        "panel {} ({f}): {what} {v} is outside {MIN_SIDE}..={MAX_SIDE} px",
                        self.kind
                    );
                }
            }
        }
        Ok(())
    }
}

impl Dashboard {
    /// Reads `<dir>/<name>.toml`; clear error naming the file when missing or malformed.
    pub fn load(dir: &Path, name: &str) -> Result<Dashboard> {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            bail!(
                "invalid dashboard name {name:?}: use letters, digits, '-' and '_' only \
                 (the file is looked up as <name>.toml in {})",
                dir.display()
            );
        }
        let path = dir.join(format!("{name}.toml"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "dashboard file {} not found (dashboard {name:?})",
                    path.display()
                )
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read dashboard file {}", path.display()))
            }
        };
        Self::from_toml_str(&text)
            .with_context(|| format!("dashboard file {} is malformed", path.display()))
    }

    /// Parses and validates a dashboard declaration.
    pub fn from_toml_str(text: &str) -> Result<Dashboard> {
        let dashboard: Dashboard = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        dashboard.validate()?;
        Ok(dashboard)
    }

    /// The dashboard shipped in `dashboards/default.toml`, embedded at compile
    /// time so the daemon has charts even when the directory is missing.
    pub fn builtin_default() -> Dashboard {
        Self::from_toml_str(include_str!("../../dashboards/default.toml"))
            .expect("dashboards/default.toml is valid")
    }

    /// The dashboards shipped in `dashboards/`, compiled in: used when the daemon's
    /// dashboards folder has no file of that name.
    pub fn builtin(name: &str) -> Option<Dashboard> {
        let text = match name {
            "default" => include_str!("../../dashboards/default.toml"),
            "compare" => include_str!("../../dashboards/compare.toml"),
            _ => return None,
        };
        Some(Self::from_toml_str(text).expect("the shipped dashboards are valid"))
    }

    /// Checks file names (plain `.png` names, no duplicates) and sizes.
    pub fn validate(&self) -> Result<()> {
        if self.panels.is_empty() {
            bail!("the dashboard declares no panels (add [[panels]] tables)");
        }
        let mut seen = HashSet::new();
        for p in &self.panels {
            p.validate()?;
            if !seen.insert(p.file.to_ascii_lowercase()) {
                bail!("two panels write the same file {:?}", p.file);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::charts::tests::dashboards_dir;
    use crate::charts::PanelKind;

    #[test]
    fn load_missing_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Dashboard::load(dir.path(), "nope").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("nope.toml"), "{msg}");
        assert!(msg.contains("not found"), "{msg}");
    }

    #[test]
    fn load_malformed_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("syntax", "[[panels]\nkind = "),
            (
                "kind",
                "[[panels]]\nkind = \"pie_chart\"\nfile = \"x.png\"\n",
            ),
            ("missing", "[[panels]]\nkind = \"loss_curves\"\n"),
            (
                "typo",
                "[[panels]]\nkind = \"loss_curves\"\nfile = \"a.png\"\nwidht = 3\n",
            ),
            (
                "path",
                "[[panels]]\nkind = \"loss_curves\"\nfile = \"../a.png\"\n",
            ),
            (
                "ext",
                "[[panels]]\nkind = \"loss_curves\"\nfile = \"a.svg\"\n",
            ),
            (
                "size",
                "[[panels]]\nkind = \"loss_curves\"\nfile = \"a.png\"\nwidth = 5\n",
            ),
            ("empty", "title = \"nothing\"\n"),
            (
                "dup",
                "[[panels]]\nkind = \"loss_curves\"\nfile = \"a.png\"\n\
                 [[panels]]\nkind = \"learning_curves\"\nfile = \"a.png\"\n",
            ),
        ];
        for (name, body) in cases {
            std::fs::write(dir.path().join(format!("{name}.toml")), body).unwrap();
            let err = Dashboard::load(dir.path(), name).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(&format!("{name}.toml")), "{name}: {msg}");
            assert!(msg.contains("malformed"), "{name}: {msg}");
        }
    }

    #[test]
    fn load_rejects_path_like_names() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", "../etc/passwd", "a/b", "a.b"] {
            assert!(Dashboard::load(dir.path(), name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn load_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mine.toml"),
            "title = \"Mine\"\n[[panels]]\nkind = \"test_accuracy_bars\"\nfile = \"bars.png\"\n\
             height = 900\n",
        )
        .unwrap();
        let d = Dashboard::load(dir.path(), "mine").unwrap();
        assert_eq!(d.title.as_deref(), Some("Mine"));
        assert_eq!(d.panels.len(), 1);
        assert_eq!(d.panels[0].kind, PanelKind::TestAccuracyBars);
        assert_eq!(d.panels[0].size(), (DEFAULT_WIDTH, 900));
    }

    #[test]
    fn builtin_default_has_its_panels() {
        let d = Dashboard::builtin_default();
        let files: Vec<&str> = d.panels.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "learning_curves.png",
                "loss_curves.png",
                "accuracy_curves.png",
                "test_accuracy.png",
                "accuracy_vs_parameters.png",
                "optimization_history.png",
                "param_effects.png",
            ]
        );
    }

    #[test]
    fn compare_dashboard_declares_every_new_panel() {
        let board = Dashboard::load(&dashboards_dir(), "compare").unwrap();
        let kinds: HashSet<PanelKind> = board.panels.iter().map(|p| p.kind).collect();
        for k in [
            PanelKind::OptimizationHistory,
            PanelKind::ParallelCoordinates,
            PanelKind::ParamEffects,
            PanelKind::Pareto,
            PanelKind::ParamImportance,
            PanelKind::LearningCurves,
        ] {
            assert!(kinds.contains(&k), "compare.toml lacks {k}");
        }
        // the shipped default file and the embedded copy agree
        let default = Dashboard::load(&dashboards_dir(), "default").unwrap();
        assert_eq!(
            default.panels.len(),
            Dashboard::builtin_default().panels.len()
        );
    }
}
