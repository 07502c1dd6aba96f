package main

import (
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/gpuaas/provision/tests/fleet"
)

// series is v as points, one every step seconds.
func series(v []float64, step float64) plotter.XYs {
	xy := make(plotter.XYs, len(v))
	for i, y := range v {
		xy[i].X, xy[i].Y = float64(i)*step, y
	}
	return xy
}

// writePlot writes a PNG: nodes done over time on top, CA requests per
// second (forwarded to step-ca, answered by the fault proxy, signs, and the
// TLS connections nodes opened by the kernel's time) in the middle, restarted runs starting their network work per 100 ms below.
func writePlot(s fleet.Summary, path string) error {
	top := plot.New()
	ratio := "no floor ratio"
	if s.FloorRatio > 0 {
		ratio = fmt.Sprintf("%.2fx the CPU floor", s.FloorRatio)
	}
	top.Title.Text = fmt.Sprintf("boot storm %s: %d nodes, done over time (p50 %s, p99 %s; all done in %s = %s)",
		s.StormLabel, s.Nodes, s.P50.Round(1e8), s.P99.Round(1e8), s.TimeToDone.Round(1e8), ratio)
	top.X.Label.Text = "seconds since the first node started"
	top.Y.Label.Text = "nodes done"
	top.Y.Min, top.Y.Max = 0, float64(s.Nodes)*1.05
	done, err := plotter.NewLine(series(s.DoneSeries, 1))
	if err != nil {
		return err
	}
	done.Color = color.RGBA{B: 200, A: 255}
	done.Width = vg.Points(2)
	top.Add(plotter.NewGrid(), done)

	bot := plot.New()
	ptm := "n/a"
	if v, window, ok := s.PeakToMean(); ok {
		ptm = fmt.Sprintf("%.1f %s", v, window)
	}
	bot.Title.Text = fmt.Sprintf("CA requests per second (peak %.0f, mean %.1f; peak-to-mean %s)", s.PeakRate, s.MeanRate, ptm)
	bot.X.Label.Text = "seconds since the first node started"
	bot.Y.Label.Text = "requests/s"
	bot.Add(plotter.NewGrid())
	for _, l := range []struct {
		name string
		v    []float64
		c    color.RGBA
	}{
		{"at the CA proxy (all)", s.ReqSeries, color.RGBA{A: 255}},
		{"answered by the fault proxy", s.FaultSeries, color.RGBA{R: 220, A: 255}},
		{"signs reaching step-ca", s.SignSeries, color.RGBA{G: 160, A: 255}},
		{"connections opened (kernel time)", s.ConnSeries, color.RGBA{R: 150, G: 150, A: 255}},
	} {
		line, err := plotter.NewLine(series(l.v, 1))
		if err != nil {
			return err
		}
		line.Color = l.c
		line.Width = vg.Points(1.5)
		bot.Add(line)
		bot.Legend.Add(l.name, line)
	}
	bot.Legend.Top = true
	herd, err := herdPlot(s)
	if err != nil {
		return err
	}
	for _, p := range []*plot.Plot{top, bot, herd} { // one time axis for the three
		p.X.Min, p.X.Max = 0, float64(len(s.ReqSeries))
	}
	return writePNG([][]*plot.Plot{{top}, {bot}, {herd}}, path)
}

// herdPlot is the restarted runs' network starts per 100 ms.
func herdPlot(s fleet.Summary) (*plot.Plot, error) {
	p := plot.New()
	h := s.Herd
	p.Title.Text = fmt.Sprintf("restarted runs starting their network work per 100 ms (%d runs; most in one 100 ms: %d = %.0f%%)", h.Seen, h.In100ms, 100*h.Share100ms())
	p.X.Label.Text = "seconds since the first node started"
	p.Y.Label.Text = "runs / 100 ms"
	line, err := plotter.NewLine(series(s.RestartSeries, 0.1))
	if err != nil {
		return nil, err
	}
	line.Color = color.RGBA{R: 150, B: 150, A: 255}
	line.Width = vg.Points(1)
	p.Add(plotter.NewGrid(), line)
	return p, nil
}

// writePNG draws the plots one above the other into a PNG at path.
func writePNG(rows [][]*plot.Plot, path string) error {
	img := vgimg.New(vg.Points(760), vg.Points(300*float64(len(rows))))
	dc := draw.New(img)
	t := draw.Tiles{Rows: len(rows), Cols: 1, PadX: vg.Millimeter, PadY: vg.Millimeter * 3, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(rows, t, dc)
	for i, r := range rows {
		r[0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
