//go:build race

package firstboot

func init() { raceEnabled = true }
