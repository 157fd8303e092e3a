// Package nodes holds the node functions of the gallery example: an album's photos are
// resized in a batch (one job per photo, results gathered in order), then a draft of
// the gallery is refined in a loop until it is good enough.
package nodes

import (
	"context"
	"fmt"
	"strings"
)

// Album is the run input.
type Album struct {
	Name string `json:"name"`
	// Photos are file names; each is resized by its own job.
	Photos []string `json:"photos"`
	// TargetQuality is how good the draft must get; the loop refines until it is.
	TargetQuality int `json:"targetQuality"`
}

// ListPhotos turns the album into the batch of photos to resize.
//
//flowgen:node listPhotos
func ListPhotos(ctx context.Context, in Album) ([]Photo, error) {
	photos := make([]Photo, len(in.Photos))
	for i, p := range in.Photos {
		photos[i] = Photo{Album: in.Name, File: p}
	}
	return photos, nil
}

// Photo is one batch item.
type Photo struct {
	Album string `json:"album"`
	File  string `json:"file"`
}

// Thumb is a resized photo.
type Thumb struct {
	File  string `json:"file"`
	Width int    `json:"width"`
}

// Resize makes a thumbnail of one photo; it runs once per batch item.
//
//flowgen:node resize
func Resize(ctx context.Context, in Photo) (Thumb, error) {
	name := strings.TrimSuffix(in.File, ".jpg")
	return Thumb{File: name + "-thumb.jpg", Width: 160}, nil
}

// Draft is a gallery page being refined.
type Draft struct {
	Title   string   `json:"title"`
	Thumbs  []string `json:"thumbs"`
	Quality int      `json:"quality"`
	Passes  int      `json:"passes"`
}

// Summarize lays out the thumbnails, in photo order, as a first draft.
//
//flowgen:node summarize
func Summarize(ctx context.Context, in []Thumb) (Draft, error) {
	d := Draft{Title: fmt.Sprintf("%d photos", len(in))}
	for _, t := range in {
		d.Thumbs = append(d.Thumbs, t.File)
	}
	return d, nil
}

// Improve refines the draft once; the loop controller decides whether to go again.
//
//flowgen:node improve
func Improve(ctx context.Context, in Draft) (Draft, error) {
	in.Quality++
	in.Passes++
	return in, nil
}

// Gallery is the published page.
type Gallery struct {
	Title   string   `json:"title"`
	Thumbs  []string `json:"thumbs"`
	Quality int      `json:"quality"`
	Passes  int      `json:"passes"`
}

// PublishGallery publishes the final draft.
//
//flowgen:node publishGallery
func PublishGallery(ctx context.Context, in Draft) (Gallery, error) {
	return Gallery(in), nil
}
