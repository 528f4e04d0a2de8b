//! The horizontal bar chart that `test_accuracy_bars` and `param_importance`
//! share: one row per bar from the top, the label left of the axis and the
//! value right of the bar's end.

use anyhow::Result;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use crate::charts::axes::{mesh_look, AxisSpec, TickAxis};
use crate::charts::style::{
    anchored, draw_text_at, fit_text, plot_err, Area, AXIS_DESC_PX, TICK_PX,
};

/// A chart of horizontal bars: a numeric x axis, one unit of y per bar.
pub(super) type BarChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<TickAxis, RangedCoordf64>>;

/// Builds a chart of `rows` bars on `area`, with `label_w` px for the bar
/// labels left of the axis, and draws its x grid, axis and description.
pub(super) fn hbar_chart<'a, 'b>(
    area: &'a Area<'b>,
    x: AxisSpec,
    rows: usize,
    label_w: u32,
    margin_right: u32,
) -> Result<BarChart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(10)
        .margin_left(16)
        .margin_right(margin_right)
        .margin_bottom(10)
        .x_label_area_size(60)
        .y_label_area_size(label_w + 20)
        .build_cartesian_2d(x.scale, 0f64..rows as f64)
        .map_err(plot_err)?;
    let mut mesh = chart.configure_mesh();
    mesh_look(&mut mesh, AXIS_DESC_PX, TICK_PX)
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(x.desc)
        .x_label_formatter(x.fmt)
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// Height of one bar's row in px.
pub(super) fn row_px(chart: &BarChart, x0: f64) -> i32 {
    let a = chart.backend_coord(&(x0, 0.0));
    let b = chart.backend_coord(&(x0, 1.0));
    (a.1 - b.1).abs()
}

/// Where the bars of a [`hbar_chart`] go.
pub(super) struct BarLayout {
    /// Number of bars (rows).
    pub(super) rows: usize,
    /// Where every bar starts on the x axis.
    pub(super) x0: f64,
    /// Bar thickness as a share of its row.
    pub(super) thickness: f64,
    /// Width in px of the label column.
    pub(super) label_w: u32,
}

/// One bar, with the text right of its end and its label.
pub(super) struct Bar<'t> {
    pub(super) value: f64,
    pub(super) color: RGBColor,
    pub(super) value_text: String,
    pub(super) value_style: TextStyle<'static>,
    pub(super) label: &'t str,
    pub(super) label_style: TextStyle<'static>,
}

impl BarLayout {
    /// Draws `bar` in row `rank` (0 at the top); the label is shortened to
    /// fit the label column.
    pub(super) fn draw(
        &self,
        root: &Area,
        chart: &mut BarChart,
        rank: usize,
        bar: Bar,
    ) -> Result<()> {
        let yc = (self.rows - 1 - rank) as f64 + 0.5;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (self.x0, yc - self.thickness / 2.0),
                    (bar.value, yc + self.thickness / 2.0),
                ],
                bar.color.filled(),
            )))
            .map_err(plot_err)?;
        let end = chart.backend_coord(&(bar.value, yc));
        let vs = anchored(bar.value_style, HPos::Left, VPos::Center);
        draw_text_at(root, &bar.value_text, &vs, (end.0 + 6, end.1))?;
        let start = chart.backend_coord(&(self.x0, yc));
        let ls = anchored(bar.label_style, HPos::Right, VPos::Center);
        let label = fit_text(root, bar.label, &ls, self.label_w);
        draw_text_at(root, &label, &ls, (start.0 - 10, start.1))
    }
}
