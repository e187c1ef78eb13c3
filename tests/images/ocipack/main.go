// Command ocipack packs one static binary into an image archive that
// `ctr images import` takes, without a registry or a container engine: an
// OCI image layout (oci-layout, index.json, blobs/sha256/...) holding one
// gzipped layer with the binary at /<name>, the image config and the
// manifest, plus the docker-archive manifest.json naming the same blobs.
// Timestamps are fixed, so the same binary gives the same digests.
//
//	ocipack -binary PATH -ref sextant.test/NAME:TAG -out FILE.tar [-arg A]...
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

var epoch = time.Unix(0, 0).UTC()

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    map[string]string `json:"platform,omitempty"`
}

func main() {
	binary := flag.String("binary", "", "the static binary to put at /<its file name>")
	ref := flag.String("ref", "", "the image reference, e.g. sextant.test/pause:1")
	out := flag.String("out", "", "the archive to write")
	var args stringList
	flag.Var(&args, "arg", "an argument after the entrypoint (repeatable): the image's Cmd")
	flag.Parse()
	if *binary == "" || *ref == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: ocipack -binary PATH -ref REF -out FILE.tar [-arg A]...")
		os.Exit(2)
	}
	if err := pack(*binary, *ref, *out, args); err != nil {
		fmt.Fprintf(os.Stderr, "ocipack: %v\n", err)
		os.Exit(1)
	}
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func pack(binary, ref, out string, cmd []string) error {
	content, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	name := filepath.Base(binary)

	// The layer: /<name> (0755) and an empty /tmp, owned by root.
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	if err := tw.WriteHeader(&tar.Header{Name: "tmp/", Mode: 01777, Typeflag: tar.TypeDir, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0755, Size: int64(len(content)), Typeflag: tar.TypeReg, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return err
	}
	if _, err := tw.Write(content); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	zw.ModTime = epoch
	if _, err := zw.Write(layer.Bytes()); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}

	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.Format(time.RFC3339),
		"config": map[string]any{
			"Entrypoint": []string{"/" + name},
			"Cmd":        cmd,
			"Env":        []string{"PATH=/"},
			"WorkingDir": "/",
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{digest(layer.Bytes())}},
		"history": []map[string]any{{"created": epoch.Format(time.RFC3339), "created_by": "ocipack " + name}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digest(config), Size: len(config)},
		"layers":        []descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: digest(gz.Bytes()), Size: gz.Len()}},
	})
	if err != nil {
		return err
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{
			MediaType: "application/vnd.oci.image.manifest.v1+json",
			Digest:    digest(manifest),
			Size:      len(manifest),
			Annotations: map[string]string{
				"io.containerd.image.name":          ref,
				"org.opencontainers.image.ref.name": ref,
			},
			Platform: map[string]string{"architecture": "amd64", "os": "linux"},
		}},
	})
	if err != nil {
		return err
	}
	blob := func(b []byte) string { return "blobs/sha256/" + strings.TrimPrefix(digest(b), "sha256:") }
	dockerManifest, err := json.Marshal([]map[string]any{{
		"Config":   blob(config),
		"RepoTags": []string{ref},
		"Layers":   []string{blob(gz.Bytes())},
	}})
	if err != nil {
		return err
	}

	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	aw := tar.NewWriter(f)
	files := []struct {
		name string
		body []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{blob(gz.Bytes()), gz.Bytes()},
		{blob(config), config},
		{blob(manifest), manifest},
		{"index.json", index},
		{"manifest.json", dockerManifest},
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := aw.WriteHeader(&tar.Header{Name: dir, Mode: 0755, Typeflag: tar.TypeDir, ModTime: epoch}); err != nil {
			return err
		}
	}
	for _, file := range files {
		if err := aw.WriteHeader(&tar.Header{Name: file.name, Mode: 0644, Size: int64(len(file.body)), Typeflag: tar.TypeReg, ModTime: epoch}); err != nil {
			return err
		}
		if _, err := aw.Write(file.body); err != nil {
			return err
		}
	}
	if err := aw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
