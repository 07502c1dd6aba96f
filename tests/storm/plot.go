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

// plot writes a PNG: nodes done over time on top, CA requests per second
// (forwarded to step-ca, answered by the fault proxy, signs) below.
func writePlot(s fleet.Summary, path string) error {
	series := func(v []float64) plotter.XYs {
		xy := make(plotter.XYs, len(v))
		for i, y := range v {
			xy[i].X, xy[i].Y = float64(i), y
		}
		return xy
	}
	top := plot.New()
	top.Title.Text = fmt.Sprintf("boot storm %s: %d nodes, done over time (p50 %s, p99 %s)", s.StormLabel, s.Nodes, s.P50.Round(1e6), s.P99.Round(1e6))
	top.X.Label.Text = "seconds since the first node started"
	top.Y.Label.Text = "nodes done"
	top.Y.Min, top.Y.Max = 0, float64(s.Nodes)*1.05
	done, err := plotter.NewLine(series(s.DoneSeries))
	if err != nil {
		return err
	}
	done.Color = color.RGBA{B: 200, A: 255}
	done.Width = vg.Points(2)
	top.Add(plotter.NewGrid(), done)

	bot := plot.New()
	bot.Title.Text = fmt.Sprintf("CA requests per second (peak %.0f, mean %.1f)", s.PeakRate, s.MeanRate)
	bot.X.Label.Text = "seconds since the first node started"
	bot.Y.Label.Text = "requests/s"
	bot.Add(plotter.NewGrid())
	for _, l := range []struct {
		name string
		v    []float64
		c    color.RGBA
	}{
		{"at the CA proxy (all)", s.ReqSeries, color.RGBA{A: 255}},
		{"answered 503 by the fault proxy", s.FaultSeries, color.RGBA{R: 220, A: 255}},
		{"signs reaching step-ca", s.SignSeries, color.RGBA{G: 160, A: 255}},
	} {
		line, err := plotter.NewLine(series(l.v))
		if err != nil {
			return err
		}
		line.Color = l.c
		line.Width = vg.Points(1.5)
		bot.Add(line)
		bot.Legend.Add(l.name, line)
	}
	bot.Legend.Top = true

	img := vgimg.New(vg.Points(720), vg.Points(640))
	dc := draw.New(img)
	t := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter, PadY: vg.Millimeter * 3, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align([][]*plot.Plot{{top}, {bot}}, t, dc)
	top.Draw(canvases[0][0])
	bot.Draw(canvases[1][0])
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
