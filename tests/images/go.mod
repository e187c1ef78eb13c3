module sextant.test/images

go 1.22
